// Command netprobe is the cluster tier's test program: it runs in the test
// pods (image localhost/weft-test:dev, scripts/cluster-images.sh) and checks
// pod-to-pod and service traffic over weft. It uses the Go standard library
// only, so it builds static with CGO_ENABLED=0 and needs nothing else.
//
//	netprobe serve [-tcp :8080] [-udp :8081] [-http :8082]
//	netprobe tcp [-timeout 5s] HOST:PORT
//	netprobe udp [-timeout 5s] [-tries 5] HOST:PORT
//	netprobe watch -udp HOST:PORT -tcp HOST:PORT [-interval 5ms] -duration 60s
//	netprobe version
//
// serve tells every client the address it sees the client at ("peer=IP:PORT",
// IPv6 in brackets), so a test can tell whether traffic was masqueraded or
// kept its pod address: TCP writes the peer line on connect, then echoes
// lines; UDP answers each datagram with "peer=IP:PORT " and the datagram;
// HTTP answers any request with the peer line. watch measures an outage: it
// streams UDP datagrams and keeps one TCP connection echoing for a duration,
// then prints one line of JSON.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const version = "0.1.0"

// ioTimeout bounds every single read or write of the clients; serve's
// connections may idle for serveIdle between lines.
const (
	ioTimeout = 5 * time.Second
	serveIdle = 10 * time.Minute
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  netprobe serve [-tcp :8080] [-udp :8081] [-http ADDR]
  netprobe tcp [-timeout 5s] HOST:PORT
  netprobe udp [-timeout 5s] [-tries 5] HOST:PORT
  netprobe watch -udp HOST:PORT -tcp HOST:PORT [-interval 5ms] -duration 60s
  netprobe version
`)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "serve":
		err = serve(args)
	case "tcp":
		err = tcpProbe(args)
	case "udp":
		err = udpProbe(args)
	case "watch":
		err = watch(args)
	case "version", "-version", "--version":
		fmt.Printf("netprobe %s %s\n", version, runtime.Version())
	case "help", "-h", "-help", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "netprobe: unknown command %q\n", cmd)
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "netprobe %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

// newFlags returns a flag set that reports errors to stderr and exits 2.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("netprobe "+name, flag.ExitOnError)
	fs.SetOutput(os.Stderr)
	return fs
}

// oneTarget parses the flags and returns the single HOST:PORT argument.
func oneTarget(fs *flag.FlagSet, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", fmt.Errorf("want one HOST:PORT argument, got %d", fs.NArg())
	}
	return fs.Arg(0), nil
}

func peerLine(addr string) string { return "peer=" + addr }

// serve runs the TCP, UDP and HTTP servers until SIGINT or SIGTERM (as PID 1
// of a container it must handle SIGTERM itself, or the kernel ignores it).
func serve(args []string) error {
	fs := newFlags("serve")
	tcpAddr := fs.String("tcp", ":8080", "TCP listen address: peer line, then line echo (empty: off)")
	udpAddr := fs.String("udp", ":8081", "UDP listen address: datagram echo after the peer (empty: off)")
	httpAddr := fs.String("http", "", "HTTP listen address: any request gets the peer line (empty: off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	errc := make(chan error, 3)
	if *tcpAddr != "" {
		ln, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			return err
		}
		go func() { errc <- serveTCP(ln) }()
		fmt.Fprintf(os.Stderr, "netprobe: tcp on %s\n", ln.Addr())
	}
	if *udpAddr != "" {
		pc, err := net.ListenPacket("udp", *udpAddr)
		if err != nil {
			return err
		}
		go func() { errc <- serveUDP(pc) }()
		fmt.Fprintf(os.Stderr, "netprobe: udp on %s\n", pc.LocalAddr())
	}
	if *httpAddr != "" {
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return err
		}
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				io.WriteString(w, peerLine(r.RemoteAddr)+"\n")
			}),
			ReadHeaderTimeout: ioTimeout,
			ReadTimeout:       ioTimeout,
			WriteTimeout:      ioTimeout,
			IdleTimeout:       time.Minute,
		}
		go func() { errc <- srv.Serve(ln) }()
		fmt.Fprintf(os.Stderr, "netprobe: http on %s\n", ln.Addr())
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	select {
	case sig := <-sigc:
		fmt.Fprintf(os.Stderr, "netprobe: %v, exiting\n", sig)
		return nil
	case err := <-errc:
		return err
	}
}

func serveTCP(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go echoTCP(c)
	}
}

func echoTCP(c net.Conn) {
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, peerLine(c.RemoteAddr().String())+"\n"); err != nil {
		return
	}
	sc := bufio.NewScanner(c)
	for {
		c.SetReadDeadline(time.Now().Add(serveIdle))
		if !sc.Scan() {
			return
		}
		c.SetWriteDeadline(time.Now().Add(ioTimeout))
		if _, err := c.Write(append(sc.Bytes(), '\n')); err != nil {
			return
		}
	}
}

func serveUDP(pc net.PacketConn) error {
	buf := make([]byte, 65536)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		reply := append([]byte(peerLine(addr.String())+" "), buf[:n]...)
		// A failed answer (no route back, ICMP error) is the client's loss.
		pc.WriteTo(reply, addr)
	}
}

// tcpProbe connects and prints the server's first line (its peer line).
func tcpProbe(args []string) error {
	fs := newFlags("tcp")
	timeout := fs.Duration("timeout", ioTimeout, "connect and read timeout")
	target, err := oneTarget(fs, args)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", target, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s: reading the peer line: %w", target, err)
	}
	fmt.Print(line)
	return nil
}

// udpProbe sends a datagram, again each second without an answer up to
// -tries times, and prints the answer; -timeout bounds the whole probe.
func udpProbe(args []string) error {
	fs := newFlags("udp")
	timeout := fs.Duration("timeout", ioTimeout, "overall timeout")
	tries := fs.Int("tries", 5, "datagrams to send, one second apart, until one is answered")
	target, err := oneTarget(fs, args)
	if err != nil {
		return err
	}
	if *tries < 1 {
		return fmt.Errorf("-tries %d: want at least 1", *tries)
	}
	end := time.Now().Add(*timeout)
	c, err := net.DialTimeout("udp", target, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 65536)
	lastErr := errors.New("no answer")
	for i := 1; i <= *tries && time.Now().Before(end); i++ {
		wait := time.Now().Add(time.Second)
		if i == *tries || wait.After(end) {
			wait = end
		}
		if _, err := c.Write([]byte("netprobe " + strconv.Itoa(i))); err != nil {
			// An ICMP error of an earlier try (connection refused): retry.
			lastErr = err
			time.Sleep(time.Until(wait))
			continue
		}
		c.SetReadDeadline(wait)
		n, err := c.Read(buf)
		if err != nil {
			lastErr = err
			time.Sleep(time.Until(wait))
			continue
		}
		fmt.Printf("%s\n", buf[:n])
		return nil
	}
	return fmt.Errorf("%s: no answer to %d datagrams in %v: %v", target, *tries, *timeout, lastErr)
}

// watchResult is watch's one line of JSON.
type watchResult struct {
	Sent         int64   `json:"sent"`
	Received     int64   `json:"received"`
	LongestGapMs float64 `json:"longest_gap_ms"`
	TCPOK        bool    `json:"tcp_ok"`
	TCPError     string  `json:"tcp_error"`
	TCPLines     int64   `json:"tcp_lines"`
}

// watch streams sequence-numbered UDP datagrams to a serve UDP port and keeps
// one TCP connection to a serve TCP port echoing a line every 50 ms for the
// duration, then prints a watchResult. It exits 0 when the TCP connection
// broke: the caller asserts on the JSON.
func watch(args []string) error {
	fs := newFlags("watch")
	udpTarget := fs.String("udp", "", "serve's UDP HOST:PORT (required)")
	tcpTarget := fs.String("tcp", "", "serve's TCP HOST:PORT (required)")
	interval := fs.Duration("interval", 5*time.Millisecond, "time between UDP datagrams")
	duration := fs.Duration("duration", 0, "how long to watch (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case *udpTarget == "" || *tcpTarget == "":
		return errors.New("-udp and -tcp are required")
	case *duration <= 0:
		return errors.New("-duration is required")
	case *interval <= 0:
		return errors.New("-interval must be positive")
	}
	uc, err := net.DialTimeout("udp", *udpTarget, ioTimeout)
	if err != nil {
		return err
	}
	defer uc.Close()

	start := time.Now()
	end := &stopClock{}
	end.at.Store(start.Add(*duration).UnixNano())
	ctx, cancel := context.WithDeadline(context.Background(), end.time())
	defer cancel()
	// SIGTERM or SIGINT ends the watch early, with the result so far (the
	// caller stops it once what it watched is over).
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case <-sigc:
			end.now()
			cancel()
		case <-ctx.Done():
		}
	}()
	var res watchResult
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); res.Sent = udpSend(ctx, uc, *interval) }()
	go func() {
		defer wg.Done()
		res.Received, res.LongestGapMs = udpReceive(uc, start, end)
	}()
	go func() {
		defer wg.Done()
		lines, err := tcpEcho(ctx, *tcpTarget, end)
		res.TCPLines, res.TCPOK = lines, err == nil
		if err != nil {
			res.TCPError = err.Error()
		}
	}()
	wg.Wait()
	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// udpSend sends "seq=N" every interval until ctx ends and returns how many it
// tried to send (a send the kernel refused, after an ICMP error, counts as
// sent and lost).
func udpSend(ctx context.Context, c net.Conn, interval time.Duration) int64 {
	t := time.NewTicker(interval)
	defer t.Stop()
	var seq int64
	for {
		seq++
		c.Write([]byte("seq=" + strconv.FormatInt(seq, 10)))
		select {
		case <-ctx.Done():
			return seq
		case <-t.C:
		}
	}
}

// stopClock is when a watch ends: its duration's end, or earlier on a signal.
type stopClock struct{ at atomic.Int64 }

func (c *stopClock) time() time.Time { return time.Unix(0, c.at.Load()) }

// over says whether the watch has ended at t.
func (c *stopClock) over(t time.Time) bool { return !t.Before(c.time()) }

// now ends the watch at once.
func (c *stopClock) now() {
	if n := time.Now().UnixNano(); n < c.at.Load() {
		c.at.Store(n)
	}
}

// udpReceive counts the echoes until end and returns the count and the
// longest time without one, counting from start and up to end.
func udpReceive(c net.Conn, start time.Time, end *stopClock) (int64, float64) {
	buf := make([]byte, 2048)
	var n int64
	last, longest := start, time.Duration(0)
	for {
		// Short deadlines, so an early end is seen within 100 ms.
		c.SetReadDeadline(minTime(time.Now().Add(100*time.Millisecond), end.time()))
		m, err := c.Read(buf)
		now := time.Now()
		if end.over(now) {
			break
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// ECONNREFUSED from an ICMP error while the far side is away:
			// keep listening, but do not spin.
			time.Sleep(time.Millisecond)
			continue
		}
		if !strings.Contains(string(buf[:m]), " seq=") {
			continue
		}
		n++
		if gap := now.Sub(last); gap > longest {
			longest = gap
		}
		last = now
	}
	if gap := end.time().Sub(last); gap > longest {
		longest = gap
	}
	return n, float64(longest.Microseconds()) / 1000
}

// tcpEcho keeps one connection, writes a line every 50 ms and checks its echo;
// it returns the lines echoed and the first failure. A read or write still
// pending when the duration ends is not a failure.
func tcpEcho(ctx context.Context, target string, end *stopClock) (int64, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, ioTimeout)
	c, err := d.DialContext(dctx, "tcp", target)
	cancel()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	deadline := func() time.Time {
		// A little past the end, so a slow echo at the end is not cut off.
		return minTime(time.Now().Add(ioTimeout), end.time().Add(time.Second))
	}
	c.SetReadDeadline(deadline())
	if line, err := r.ReadString('\n'); err != nil {
		return 0, fmt.Errorf("reading the peer line: %w", err)
	} else if !strings.HasPrefix(line, "peer=") {
		return 0, fmt.Errorf("first line %q is not a peer line", strings.TrimSpace(line))
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var lines int64
	for {
		select {
		case <-ctx.Done():
			return lines, nil
		case <-t.C:
		}
		want := "line " + strconv.FormatInt(lines+1, 10) + "\n"
		c.SetWriteDeadline(deadline())
		if _, err := io.WriteString(c, want); err != nil {
			if end.over(time.Now()) {
				return lines, nil
			}
			return lines, fmt.Errorf("write after %d lines: %w", lines, err)
		}
		c.SetReadDeadline(deadline())
		got, err := r.ReadString('\n')
		if err != nil {
			if end.over(time.Now()) {
				return lines, nil
			}
			return lines, fmt.Errorf("read after %d lines: %w", lines, err)
		}
		if got != want {
			return lines, fmt.Errorf("echo %q, want %q", strings.TrimSpace(got), strings.TrimSpace(want))
		}
		lines++
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
