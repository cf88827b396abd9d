#!/bin/sh
# Bytewax's Helm chart (and so waxctl) initialises recovery with `sh ./entrypoint-recovery.sh`
# in the image's working directory; ours does it the worker's way.
exec sh "$(dirname "$0")/entrypoint.sh" init-recovery
