// A load generator for the ingress bench (python -m bench.ingress): POSTs one signed body over
// kept-alive connections, either closed-loop (-rate 0: each of -c connections sends its next
// request when the last answered, the peak) or open-loop (-rate N per second, paced, so the
// latency at a given load is not hidden by the generator waiting). Prints one JSON line.
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "POST target")
	conns := flag.Int("c", 32, "connections")
	duration := flag.Duration("d", 5*time.Second, "measured time")
	rate := flag.Float64("rate", 0, "requests per second (0: as fast as answered)")
	size := flag.Int("size", 1024, "body bytes")
	secret := flag.String("secret", "bench-secret", "app secret signing the bodies")
	unique := flag.Bool("unique", true, "a different body per request (as Meta's deliveries)")
	flag.Parse()
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns, DisableCompression: true,
	}, Timeout: 30 * time.Second}

	filler := bytes.Repeat([]byte("x"), *size)
	body := func(n int) ([]byte, string) {
		b := []byte(`{"object":"whatsapp_business_account","n":` + strconv.Itoa(n) + `,"pad":"`)
		b = append(b, filler[:max(0, *size-len(b)-2)]...)
		b = append(b, '"', '}')
		mac := hmac.New(sha256.New, []byte(*secret))
		mac.Write(b)
		return b, "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	var mu sync.Mutex
	var latencies []time.Duration
	statuses := map[int]int{}
	errors := 0
	counter := 0
	next := func() int { mu.Lock(); defer mu.Unlock(); counter++; return counter }
	one := func(n int) {
		if !*unique {
			n = 0
		}
		b, sig := body(n)
		req, _ := http.NewRequest("POST", *url, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Hub-Signature-256", sig)
		started := time.Now()
		resp, err := client.Do(req)
		took := time.Since(started)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errors++
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses[resp.StatusCode]++
		latencies = append(latencies, took)
	}
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	began := time.Now()
	if *rate <= 0 {
		for i := 0; i < *conns; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					one(next())
				}
			}()
		}
	} else {
		interval := time.Duration(float64(time.Second) / *rate)
		slots := make(chan struct{}, *conns*4)
		for at := began; at.Before(deadline); at = at.Add(interval) {
			time.Sleep(time.Until(at))
			select {
			case slots <- struct{}{}:
			default: // every slot busy: the server is behind; counted as an error, not queued
				mu.Lock()
				errors++
				mu.Unlock()
				continue
			}
			wg.Add(1)
			go func(n int) { defer wg.Done(); one(n); <-slots }(next())
		}
	}
	wg.Wait()
	elapsed := time.Since(began).Seconds()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	ok := statuses[200]
	out := map[string]any{
		"requests": len(latencies), "ok": ok, "errors": errors, "statuses": statuses,
		"rps": float64(ok) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1),
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	if errors > 0 && ok == 0 {
		os.Exit(1)
	}
}
