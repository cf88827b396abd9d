#!/bin/sh
# wa-worker container entrypoint.
#
#   entrypoint.sh [bytewax.run options]   initialise recovery when missing, then exec the worker
#   entrypoint.sh init-recovery           only initialise recovery (Kubernetes init container)
#   entrypoint.sh ingress                 Meta's webhook endpoint (`wa-worker ingress`, INGRESS_PORT)
#   entrypoint.sh COMMAND [ARGS]          run another command, e.g. `wa-worker dlq list`
#
# Settings are the worker's (README); Bytewax's own variables, as set by its Helm chart and
# waxctl, fill in ours when ours are unset: BYTEWAX_RECOVERY_DIRECTORY, BYTEWAX_RECOVERY_PARTS,
# BYTEWAX_SNAPSHOT_INTERVAL, BYTEWAX_RECOVERY_BACKUP_INTERVAL. bytewax.run itself reads
# BYTEWAX_WORKERS_PER_PROCESS, BYTEWAX_PROCESS_ID, BYTEWAX_ADDRESSES, BYTEWAX_HOSTFILE_PATH and
# BYTEWAX_POD_NAME/BYTEWAX_STATEFULSET_NAME.
#
# Kubernetes StatefulSet without waxctl (deploy/k8s): BYTEWAX_PROCESSES (replicas) and
# BYTEWAX_CLUSTER_SERVICE (headless Service) give every pod the addresses
# `<statefulset>-<i>.<service>:<BYTEWAX_CLUSTER_PORT>`; RECOVERY_PER_PROCESS=true means each pod
# has a volume of its own, so it keeps only the recovery partitions i with
# i % BYTEWAX_PROCESSES == its process id (the cluster as a whole must hold each exactly once).
set -eu

PYTHON=${PYTHON:-python}

fail() {
    echo "entrypoint: $*" >&2
    exit 2
}

is_count() {
    case $1 in '' | *[!0-9]*) return 1 ;; *) [ "$1" -ge 1 ] ;; esac
}

RECOVERY_DIR=${RECOVERY_DIR:-${BYTEWAX_RECOVERY_DIRECTORY:-/var/lib/wa-worker/recovery}}
export RECOVERY_DIR
# Same default as the worker's RECOVERY_PARTITIONS setting.
RECOVERY_PARTITIONS=${RECOVERY_PARTITIONS:-${BYTEWAX_RECOVERY_PARTS:-8}}
export RECOVERY_PARTITIONS
if [ -z "${SNAPSHOT_INTERVAL_S:-}" ] && [ -n "${BYTEWAX_SNAPSHOT_INTERVAL:-}" ]; then
    export SNAPSHOT_INTERVAL_S="$BYTEWAX_SNAPSHOT_INTERVAL"
fi
if [ -z "${RECOVERY_BACKUP_INTERVAL_S:-}" ] && [ -n "${BYTEWAX_RECOVERY_BACKUP_INTERVAL:-}" ]; then
    export RECOVERY_BACKUP_INTERVAL_S="$BYTEWAX_RECOVERY_BACKUP_INTERVAL"
fi
is_count "$RECOVERY_PARTITIONS" || fail "RECOVERY_PARTITIONS must be a positive integer (got '$RECOVERY_PARTITIONS')"

# This process's id as bytewax.run finds it from the environment (`-i` is not looked at here).
process_id() {
    if [ -n "${BYTEWAX_PROCESS_ID:-}" ]; then
        echo "$BYTEWAX_PROCESS_ID"
    elif [ -n "${BYTEWAX_POD_NAME:-}" ] && [ -n "${BYTEWAX_STATEFULSET_NAME:-}" ]; then
        echo "${BYTEWAX_POD_NAME#"$BYTEWAX_STATEFULSET_NAME"-}"
    else
        echo 0
    fi
}

has_partitions() {
    for part in "$1"/part-*.sqlite3; do
        [ -e "$part" ] && return 0
    done
    return 1
}

init_recovery() {
    if has_partitions "$RECOVERY_DIR"; then
        echo "entrypoint: recovery partitions found in $RECOVERY_DIR"
        return
    fi
    mkdir -p "$RECOVERY_DIR" || fail "RECOVERY_DIR: cannot create $RECOVERY_DIR (mount a writable volume there)"
    id=0
    step=1
    if [ "${RECOVERY_PER_PROCESS:-false}" = true ]; then
        step=${BYTEWAX_PROCESSES:-}
        is_count "$step" || fail "RECOVERY_PER_PROCESS=true needs BYTEWAX_PROCESSES (got '$step')"
        id=$(process_id)
        case $id in '' | *[!0-9]*) fail "cannot tell this process's id (got '$id')" ;; esac
        # A process owning no partition would recreate the whole set on every start.
        [ "$RECOVERY_PARTITIONS" -ge "$step" ] ||
            fail "RECOVERY_PARTITIONS ($RECOVERY_PARTITIONS) must be >= BYTEWAX_PROCESSES ($step)"
    fi
    # Created all together (each partition records the total), then this process takes its
    # share. `ln` never replaces a partition that another pod sharing the volume put there first.
    scratch=$(mktemp -d "$RECOVERY_DIR/.init.XXXXXX")
    "$PYTHON" -m bytewax.recovery "$scratch" "$RECOVERY_PARTITIONS"
    i=$id
    kept=""
    while [ "$i" -lt "$RECOVERY_PARTITIONS" ]; do
        if ln "$scratch/part-$i.sqlite3" "$RECOVERY_DIR/part-$i.sqlite3" 2>/dev/null; then
            kept="$kept $i"
        elif [ ! -e "$RECOVERY_DIR/part-$i.sqlite3" ]; then
            rm -rf "$scratch"
            fail "RECOVERY_DIR: cannot create partition files in $RECOVERY_DIR"
        fi
        i=$((i + step))
    done
    rm -rf "$scratch"
    echo "entrypoint: created recovery partitions$kept (of $RECOVERY_PARTITIONS) in $RECOVERY_DIR"
}

# Addresses of a StatefulSet's pods through its headless Service's stable DNS names.
statefulset_addresses() {
    processes=${BYTEWAX_PROCESSES:-}
    is_count "$processes" || fail "BYTEWAX_CLUSTER_SERVICE needs BYTEWAX_PROCESSES (got '$processes')"
    [ -n "${BYTEWAX_STATEFULSET_NAME:-}" ] || fail "BYTEWAX_CLUSTER_SERVICE needs BYTEWAX_STATEFULSET_NAME"
    i=0
    addresses=""
    while [ "$i" -lt "$processes" ]; do
        address="$BYTEWAX_STATEFULSET_NAME-$i.$BYTEWAX_CLUSTER_SERVICE:${BYTEWAX_CLUSTER_PORT:-2101}"
        addresses="${addresses:+$addresses;}$address"
        i=$((i + 1))
    done
    echo "$addresses"
}

run_worker() {
    if [ -n "${BYTEWAX_PYTHON_FILE_PATH:-}" ] && [ "$(basename "$BYTEWAX_PYTHON_FILE_PATH")" != dataflow.py ]; then
        fail "BYTEWAX_PYTHON_FILE_PATH must name dataflow.py (got '$BYTEWAX_PYTHON_FILE_PATH')"
    fi
    if [ -n "${BYTEWAX_CLUSTER_SERVICE:-}" ] && [ -z "${BYTEWAX_ADDRESSES:-}" ] &&
        [ -z "${BYTEWAX_HOSTFILE_PATH:-}" ]; then
        BYTEWAX_ADDRESSES=$(statefulset_addresses)
        export BYTEWAX_ADDRESSES
    fi
    init_recovery
    # The code in the working directory wins over the installed copy (waxctl's tarball lands in
    # BYTEWAX_WORKDIR): bytewax.run imports wa_worker.dataflow, and so all of wa_worker, from
    # there. One package, so the two copies never mix.
    if [ -n "${BYTEWAX_WORKDIR:-}" ]; then
        cd "$BYTEWAX_WORKDIR" || fail "BYTEWAX_WORKDIR: no directory $BYTEWAX_WORKDIR"
    fi
    # exec, twice (here and in `wa-worker run`): SIGTERM from the runtime reaches the dataflow,
    # which drains and exits 0.
    exec "$PYTHON" -m wa_worker.cli run "$@"
}

case ${1:-} in
    init-recovery)
        init_recovery
        ;;
    '' | -*)
        run_worker "$@"
        ;;
    run)
        shift
        run_worker "$@"
        ;;
    ingress)
        # Stateless: no recovery. exec, so SIGTERM reaches the ingress, which drains.
        exec "$PYTHON" -m wa_worker.cli ingress
        ;;
    *)
        exec "$@"
        ;;
esac
