// Command channelsapi-bench measures channelsapi against its anchors: raw
// melody Broadcast of identical bytes, centrifugal/centrifuge publishing
// them (S1, S2, S5, S9), Gin serving the same actions over REST, one
// loopback write(2), plain GORM writers (S7), and for live queries the
// per-pk subscriptions of S3 (S8).
//
// It is a load generator that re-executes itself as a server subprocess
// (-role=server) for every scenario, pinned to its own CPU with taskset when
// available, talking over 127.0.0.1 only. The server runs the real library
// on a SQLite file in a temporary directory and reports its CPU time
// (getrusage) and memory (runtime.MemStats) on control endpoints. The
// centrifuge peer is another binary speaking the same server contract, built
// once per run from the module in peers/ (-peers). S7 also
// writes to PostgreSQL: the server CHANNELSAPI_BENCH_POSTGRES names, or a
// throwaway one it starts with initdb and pg_ctl.
//
//	go run ./cmd/channelsapi-bench              # S0-S9
//	go run ./cmd/channelsapi-bench -quick       # every scenario at small N, < 60 s
//	go run ./cmd/channelsapi-bench -scenarios s1,s5 -s1-n 2000
//
// It prints a table and writes the results as JSON (-json).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// benchConfig holds the flags of the driver.
type benchConfig struct {
	scenarios string
	quick     bool
	jsonPath  string
	pin       bool
	srcIPs    int
	verbose   bool
	profile   string // directory for server CPU profiles
	peers     string // the peers module (the centrifuge peer)

	s0Count int

	s1N       []int
	s1Events  int
	s1Repeat  int
	s2Cases   []s2Case
	s3N       int
	s3Match   int
	s3Events  int
	s4Conns   int
	s4Seconds float64
	s5N       int
	s6N       int
	s6Rate    float64
	s6Seconds float64
	s6Pad     int
	s6Sndbuf  int
	s6Raw     bool
	s7DBs     []string
	s7Writers []int
	s7Subs    int
	s7Rounds  int
	s7Seconds float64
	s9N       []int
	s9SVG     string
}

type s2Case struct {
	n       int
	rate    float64
	seconds float64
}

func main() {
	role := flag.String("role", "driver", "driver (load generator) or server (internal)")
	var sc serverConfig
	flag.StringVar(&sc.mode, "mode", "lib", "server: lib, raw or raw-default")
	flag.IntVar(&sc.rows, "rows", 1000, "server: rows to seed")
	flag.IntVar(&sc.sndbuf, "sndbuf", 0, "server: SO_SNDBUF of accepted connections (0 = kernel autotuning)")
	flag.BoolVar(&sc.unlimited, "unlimited", false, "server: lift the library's per-connection rate limit")
	flag.StringVar(&sc.cpuProfile, "cpuprofile", "", "server: write a CPU profile to this file")
	flag.StringVar(&sc.db, "db", "", "server, writers mode: sqlite or postgres")
	flag.BoolVar(&sc.queries, "queries", false, "server, lib mode: also serve the qitems stream, with a filter (S8)")

	var c benchConfig
	flag.StringVar(&c.scenarios, "scenarios", "s0,s1,s2,s3,s4,s5,s6,s7,s8,s9", "comma-separated scenarios to run")
	flag.BoolVar(&c.quick, "quick", false, "every scenario at small N (CI), < 60 s in all")
	flag.StringVar(&c.jsonPath, "json", "bench-results.json", "write results to this file (empty: do not)")
	flag.BoolVar(&c.pin, "pin", true, "pin server and load generator to different CPUs with taskset")
	flag.IntVar(&c.srcIPs, "src-ips", 0, "source addresses 127.0.0.1.. to spread client sockets over (0: one per 20k sockets)")
	flag.BoolVar(&c.verbose, "v", false, "log progress")
	flag.StringVar(&c.profile, "profile", "", "write a CPU profile of every server subprocess into this directory")
	flag.StringVar(&c.peers, "peers", filepath.Join("cmd", "channelsapi-bench", "peers"), "the peers module, built once per run for the centrifuge rows of S1, S2, S5 and S9")
	flag.IntVar(&c.s0Count, "s0-count", 200000, "S0: frames written per anchor measurement")
	s1N := flag.String("s1-n", "1000,5000", "S1: subscriber counts")
	flag.IntVar(&c.s1Events, "s1-events", 100, "S1: events per burst (below the queue size, 256)")
	flag.IntVar(&c.s1Repeat, "s1-repeat", 3, "S1: bursts per case and server (the median is reported)")
	s2 := flag.String("s2", "1000@20/5,10000@1/8", "S2: cases N@writes-per-second/seconds")
	flag.IntVar(&c.s3N, "s3-n", 10000, "S3 and S8: connections")
	flag.IntVar(&c.s3Match, "s3-match", 10, "S3 and S8: subscribers each event matches")
	flag.IntVar(&c.s3Events, "s3-events", 3000, "S3 and S8: events per measurement (S8: of each kind)")
	flag.IntVar(&c.s4Conns, "s4-conns", 16, "S4: connections per transport")
	flag.Float64Var(&c.s4Seconds, "s4-seconds", 6, "S4: seconds per transport (two rounds each)")
	flag.IntVar(&c.s5N, "s5-n", 5000, "S5: idle connections")
	flag.IntVar(&c.s6N, "s6-n", 1000, "S6: subscribers (1% stall)")
	flag.Float64Var(&c.s6Rate, "s6-rate", 60, "S6: writes per second")
	flag.Float64Var(&c.s6Seconds, "s6-seconds", 7, "S6: seconds of writes (stalled readers resume after, before the 10 s write timeout)")
	flag.IntVar(&c.s6Pad, "s6-pad", 512, "S6: padding bytes per row, so a stall fills the buffers sooner")
	flag.IntVar(&c.s6Sndbuf, "s6-sndbuf", 16384, "S6: server SO_SNDBUF (0 = kernel autotuning, up to tcp_wmem max)")
	flag.BoolVar(&c.s6Raw, "s6-raw", true, "S6: also run raw melody with stalls (silent drops)")
	s7DBs := flag.String("s7-dbs", "postgres,sqlite", "S7: databases (postgres: "+postgresEnv+" or a throwaway server)")
	s7Writers := flag.String("s7-writers", "1,16", "S7: writer goroutine counts")
	flag.IntVar(&c.s7Subs, "s7-subs", 1000, "S7: subscribers of the third variant")
	flag.IntVar(&c.s7Rounds, "s7-rounds", 12, "S7: rounds per database and writer count, each running every variant once (medians reported)")
	flag.Float64Var(&c.s7Seconds, "s7-seconds", 0.25, "S7: seconds of writes per variant and round")
	s9N := flag.String("s9-n", "1000,5000,10000,20000", "S9: subscriber counts")
	flag.StringVar(&c.s9SVG, "s9-svg", "", "S9: also write its two charts as SVG to this file (empty: do not)")
	flag.Parse()

	if *role == "server" {
		if err := runServer(sc); err != nil {
			fmt.Fprintln(os.Stderr, "channelsapi-bench server:", err)
			os.Exit(1)
		}
		return
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.quick {
		quick(&c, set)
	}
	var err error
	if c.s1N, err = parseInts(*s1N); err == nil && !set["s1-n"] && c.quick {
		c.s1N = []int{300}
	}
	if err == nil {
		c.s2Cases, err = parseS2(*s2)
		if !set["s2"] && c.quick {
			c.s2Cases = []s2Case{{300, 20, 2}, {1000, 2, 2}}
		}
	}
	if err == nil {
		c.s7Writers, err = parseInts(*s7Writers)
	}
	if err == nil {
		if c.s9N, err = parseInts(*s9N); err == nil && !set["s9-n"] && c.quick {
			c.s9N = []int{200, 500}
		}
	}
	if err == nil {
		c.s7DBs, err = parseDBs(*s7DBs)
	}
	if err == nil && (c.s7Subs <= 0 || c.s7Rounds <= 0 || c.s7Seconds <= 0) {
		err = errors.New("-s7-subs, -s7-rounds and -s7-seconds must be positive")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "channelsapi-bench:", err)
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "channelsapi-bench:", err)
		os.Exit(1)
	}
}

// quick shrinks every scenario so that -quick runs them all in < 60 s.
func quick(c *benchConfig, set map[string]bool) {
	small := func(name string, p *int, v int) {
		if !set[name] {
			*p = v
		}
	}
	small("s0-count", &c.s0Count, 50000)
	small("s1-events", &c.s1Events, 50)
	small("s1-repeat", &c.s1Repeat, 2)
	small("s3-n", &c.s3N, 1000)
	small("s3-events", &c.s3Events, 500)
	small("s5-n", &c.s5N, 500)
	small("s6-n", &c.s6N, 200)
	small("s7-subs", &c.s7Subs, 200)
	small("s7-rounds", &c.s7Rounds, 3)
	if !set["s7-seconds"] {
		c.s7Seconds = 0.2
	}
	if !set["s4-seconds"] {
		c.s4Seconds = 1
	}
	if !set["s6-rate"] {
		c.s6Rate = 100
	}
	if !set["s6-seconds"] {
		c.s6Seconds = 5
	}
	if !set["s6-raw"] {
		c.s6Raw = false
	}
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseDBs(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		switch db := strings.TrimSpace(f); db {
		case "postgres", "sqlite":
			out = append(out, db)
		default:
			return nil, fmt.Errorf("bad S7 database %q (want postgres or sqlite)", f)
		}
	}
	return out, nil
}

func parseS2(s string) ([]s2Case, error) {
	var out []s2Case
	for _, f := range strings.Split(s, ",") {
		var c s2Case
		if _, err := fmt.Sscanf(strings.TrimSpace(f), "%d@%g/%g", &c.n, &c.rate, &c.seconds); err != nil || c.n <= 0 || c.rate <= 0 || c.seconds <= 0 {
			return nil, fmt.Errorf("bad S2 case %q (want N@rate/seconds)", f)
		}
		out = append(out, c)
	}
	return out, nil
}

// driver runs the scenarios and collects their results.
type driver struct {
	cfg       benchConfig
	exe       string
	taskset   string
	serverCPU string // taskset -c argument for servers; empty: not pinned
	clientCPU string
	noFile    uint64 // RLIMIT_NOFILE (soft, as raised by the Go runtime)
	noFileMax uint64
	start     time.Time
	peer      peerBuild // the centrifuge peer, built when a scenario with centrifuge rows runs
	writeCPU  float64   // S0: server CPU-µs of one loopback write(2), once measured
	s3Result  s3Figure  // S3's figure, for S8
	scenario  string    // the running scenario, for profile names
	profiles  int
}

// s3Figure is S3's CPU per event with every connection connected, for S8.
type s3Figure struct {
	n, match int
	cpu      float64 // µs, median window; 0: S3 did not run
}

const pinnedEnv = "CHANNELSAPI_BENCH_PINNED"

func run(c benchConfig) error {
	d := &driver{cfg: c, start: time.Now()}
	var err error
	if d.exe, err = os.Executable(); err != nil {
		return err
	}
	cpus := allowedCPUs()
	if pinned, ok := os.LookupEnv(pinnedEnv); ok {
		// This is the re-executed, pinned load generator.
		d.clientCPU, d.serverCPU, _ = strings.Cut(pinned, ",")
		d.taskset, _ = exec.LookPath("taskset")
	} else if c.pin && len(cpus) >= 2 {
		if ts, err := exec.LookPath("taskset"); err == nil {
			// Re-execute the load generator pinned to its CPU, so that its
			// GOMAXPROCS follows; servers go on the next CPU.
			client, server := strconv.Itoa(cpus[0]), strconv.Itoa(cpus[1])
			env := append(os.Environ(), pinnedEnv+"="+client+","+server)
			argv := append([]string{"taskset", "-c", client, d.exe}, os.Args[1:]...)
			return syscall.Exec(ts, argv, env)
		}
		fmt.Fprintln(os.Stderr, "note: taskset not found; server and load generator share all CPUs")
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil {
		d.noFile, d.noFileMax = rl.Cur, rl.Max
	}

	m := machineInfo()
	m.ClientCPU, m.ServerCPU, m.ClientGOMAXPROCS = d.clientCPU, d.serverCPU, runtime.GOMAXPROCS(0)
	m.NoFile = d.noFile
	fmt.Printf("channelsapi-bench: %s, %d CPUs, kernel %s, %s\n", m.CPUModel, m.NumCPU, m.Kernel, m.GoVersion)
	if d.serverCPU != "" {
		fmt.Printf("  load generator on CPU %s (GOMAXPROCS %d), servers on CPU %s; RLIMIT_NOFILE %d\n", d.clientCPU, runtime.GOMAXPROCS(0), d.serverCPU, d.noFile)
	} else {
		fmt.Printf("  not pinned (GOMAXPROCS %d); RLIMIT_NOFILE %d\n", runtime.GOMAXPROCS(0), d.noFile)
	}

	scenarios := []struct {
		id    string
		run   func(context.Context) scenarioResult
		limit time.Duration // 0: scenarioLimit
	}{
		{"s0", d.s0, 0}, {"s1", d.s1, 2 * scenarioLimit}, {"s2", d.s2, 2 * scenarioLimit}, {"s3", d.s3, 0}, {"s4", d.s4, 0}, {"s5", d.s5, 2 * scenarioLimit}, {"s6", d.s6, 0},
		{"s7", d.s7, d.s7Limit()}, {"s8", d.s8, 2 * scenarioLimit}, {"s9", d.s9, d.s9Limit()},
	}
	want := map[string]bool{}
	for _, s := range strings.Split(strings.ToLower(c.scenarios), ",") {
		want[strings.TrimSpace(s)] = true
	}
	for _, id := range peerScenarios {
		if want[id] || want["all"] {
			d.logf("building the centrifuge peer in %s", c.peers)
			d.peer = buildPeer(c.peers)
			defer d.peer.remove()
			if d.peer.note != "" {
				fmt.Fprintln(os.Stderr, "note:", d.peer.note)
			}
			break
		}
	}
	if c.profile != "" {
		if err := os.MkdirAll(c.profile, 0o755); err != nil {
			return err
		}
	}
	rep := report{Machine: m, Quick: c.quick, Started: d.start.UTC().Format(time.RFC3339)}
	for _, s := range scenarios {
		if !want[s.id] && !want["all"] {
			continue
		}
		limit := scenarioLimit
		if s.limit > 0 {
			limit = s.limit
		}
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		d.scenario = s.id
		t0 := time.Now()
		d.logf("%s: start", s.id)
		res := s.run(ctx)
		cancel()
		res.ID, res.Seconds = s.id, time.Since(t0).Seconds()
		d.logf("%s: %.1fs", s.id, res.Seconds)
		rep.Scenarios = append(rep.Scenarios, res)
		printScenario(os.Stdout, res)
	}
	rep.Seconds = time.Since(d.start).Seconds()
	printSummary(os.Stdout, rep)
	if c.jsonPath != "" {
		if err := writeJSON(c.jsonPath, rep); err != nil {
			return err
		}
		fmt.Printf("results written to %s\n", c.jsonPath)
	}
	return nil
}

// scenarioLimit bounds every scenario but S7, whose length its flags set.
const scenarioLimit = 60 * time.Second

func (d *driver) logf(format string, args ...any) {
	if d.cfg.verbose {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
	}
}

// fitConns degrades a connection count to what RLIMIT_NOFILE allows (one
// descriptor per socket on each side, plus headroom), saying so.
func (d *driver) fitConns(what string, n int) int {
	const headroom = 100
	if d.noFile == 0 || uint64(n)+headroom <= d.noFile {
		return n
	}
	fit := int(d.noFile) - headroom
	fmt.Fprintf(os.Stderr, "note: %s: %d connections need %d file descriptors per process, RLIMIT_NOFILE is %d (hard %d): running with %d; raise it with ulimit -Hn\n",
		what, n, n+headroom, d.noFile, d.noFileMax, fit)
	return fit
}

// srcIPs is how many 127.0.0.x source addresses n client sockets use.
func (d *driver) srcIPs(n int) int {
	if d.cfg.srcIPs > 0 {
		return d.cfg.srcIPs
	}
	return (n + 19999) / 20000
}

// allowedCPUs lists the CPUs this process may run on (Cpus_allowed_list).
func allowedCPUs() []int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		list, ok := strings.CutPrefix(line, "Cpus_allowed_list:")
		if !ok {
			continue
		}
		var cpus []int
		for _, part := range strings.Split(strings.TrimSpace(list), ",") {
			lo, hi, isRange := strings.Cut(part, "-")
			a, err1 := strconv.Atoi(lo)
			b := a
			var err2 error
			if isRange {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil {
				return nil
			}
			for i := a; i <= b; i++ {
				cpus = append(cpus, i)
			}
		}
		return cpus
	}
	return nil
}
