// A fast stand-in for a team's handler endpoint, for benchmarks: answers every POST with
// {"ok":true} after -delay, so measured throughput is the worker's, not the peer's.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	delay := flag.Duration("delay", 50*time.Millisecond, "time each call takes")
	flag.Parse()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("http://%s/handle\n", listener.Addr())
	os.Stdout.Sync()
	http.HandleFunc("/handle", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		time.Sleep(*delay)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	})
	http.Serve(listener, nil)
}
