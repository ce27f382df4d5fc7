// Package redistest runs redis-server processes of a test's own, to stop
// and restart, for the tests of channelsapi and redisbroker.
package redistest

import (
	"context"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// Server is a redis-server process on 127.0.0.1.
type Server struct {
	tb   testing.TB
	Port int
	URL  string // redis://127.0.0.1:<port>/0
	cmd  *exec.Cmd
}

// Start starts redis-server, or skips the test when there is no
// redis-server binary. It is stopped at cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Skip("SKIP: redis-server is not installed (apt-get install redis-server)")
	}
	s := &Server{tb: tb, Port: Port(tb)}
	s.URL = "redis://127.0.0.1:" + strconv.Itoa(s.Port) + "/0"
	s.Start()
	tb.Cleanup(s.Stop)
	return s
}

// Port returns a free port of 127.0.0.1 below the kernel's range of
// ephemeral ports. A server stopped and started again keeps its port: in
// the ephemeral range, a client retrying a connection to it meanwhile may
// be given that very port as its own and connect to itself (TCP
// simultaneous open), and the server could not bind it again.
func Port(tb testing.TB) int {
	tb.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const first = 10000
	require.Greater(tb, low, first+1000, "the ephemeral port range starts too low")
	for range 100 {
		port := first + rand.IntN(low-first)
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			require.NoError(tb, l.Close())
			return port
		}
	}
	tb.Fatal("no free port below the ephemeral range")
	return 0
}

// Start runs the server (again) on its port and waits until it answers.
func (s *Server) Start() {
	s.tb.Helper()
	s.cmd = exec.Command("redis-server", "--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.tb.TempDir())
	require.NoError(s.tb, s.cmd.Start())
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(s.Port)})
	defer rdb.Close()
	require.Eventually(s.tb, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return rdb.Ping(ctx).Err() == nil
	}, 10*time.Second, 20*time.Millisecond, "redis-server on port %d does not answer", s.Port)
}

// Stop kills the server and waits for it; stopping twice is a no-op.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}
