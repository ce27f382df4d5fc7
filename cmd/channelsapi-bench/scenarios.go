package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// withServer runs fn against a fresh server subprocess.
func (d *driver) withServer(ctx context.Context, cfg serverConfig, fn func(p *serverProc) error) error {
	p, err := d.startServer(ctx, cfg)
	if err != nil {
		return err
	}
	defer p.stop()
	d.logf("  server %s pid %d on %s (GOMAXPROCS %d)", cfg.mode, p.hello.PID, p.hello.Addr, p.hello.GOMAXPROCS)
	return fn(p)
}

// dial connects n clients to p, subscribed as o says (raw servers take no
// subscription); expectConns waits for the server to count them.
func (d *driver) dial(ctx context.Context, p *serverProc, n int, o dialOptions) (*fleet, error) {
	o.url, o.srcIPs, o.workers = p.wsURL(), d.srcIPs(n), 16
	if p.raw() {
		o.subscribe, o.list = nil, nil
	}
	if p.centrifuge() {
		// Every centrifuge client subscribes to the channel; a pk or a
		// live query has no counterpart there.
		o.centrifuge, o.subscribe, o.list = true, nil, nil
	}
	t0 := time.Now()
	f, err := dialFleet(ctx, o, n)
	if err != nil {
		return nil, err
	}
	d.logf("  %d connections in %.1fs", n, time.Since(t0).Seconds())
	return f, nil
}

// expectConns waits until the server reports conns connections of which
// subs are subscribed (lib, writers, centrifuge) or conns connections (raw).
func expectConns(ctx context.Context, p *serverProc, conns, subs int) error {
	if p.raw() {
		subs = 0
	}
	return p.waitConns(ctx, conns, subs)
}

// tally is what a fleet received, once its readers have ended.
type tally struct {
	Frames      int64 `json:"frames"`
	Expected    int64 `json:"expected"`
	Gaps        int64 `json:"seq_gaps"`     // frames missing between two received ones
	Missing     int64 `json:"missing"`      // expected frames never received
	Closed1013  int   `json:"closed_1013"`  // clients closed with 1013
	SilentDrops int64 `json:"silent_drops"` // frames lost without a 1013 close
	OtherClose  int   `json:"other_close"`  // clients that ended otherwise before the end
}

// count tallies the clients for which pick is true, each expecting perClient
// frames. Call after closeAll.
func (f *fleet) count(perClient int64, pick func(i int) bool) tally {
	var t tally
	for i, c := range f.clients {
		if pick != nil && !pick(i) {
			continue
		}
		got := c.frames.Load()
		t.Frames += got
		t.Expected += perClient
		t.Gaps += c.gaps
		missing := max(perClient-got, 0)
		t.Missing += missing
		if c.close == websocket.CloseTryAgainLater {
			t.Closed1013++
			t.SilentDrops += c.gaps // a gap before the close is still silent
			continue
		}
		t.SilentDrops += missing + c.gaps
		if missing > 0 && c.close != 0 {
			t.OtherClose++
		}
	}
	return t
}

// latencies merges the latency samples (ns) of the clients pick selects.
func (f *fleet) latencies(pick func(i int) bool) []int64 {
	var all []int64
	for i, c := range f.clients {
		if pick == nil || pick(i) {
			for _, s := range c.lats {
				all = append(all, s.ns)
			}
		}
	}
	return all
}

// windowP99 splits the samples of the clients pick selects into windows of
// perWindow consecutive events (by seq) and returns the median of the
// windows' p99 in ms: a p99 that a short disturbance of the shared machine
// (another process on the CPU for a second) moves by one window, not all.
// It also returns the windows' p99 in seq order.
func (f *fleet) windowP99(pick func(i int) bool, perWindow int64) (float64, []float64) {
	windows := map[int64][]int64{}
	for i, c := range f.clients {
		if pick != nil && !pick(i) {
			continue
		}
		for _, s := range c.lats {
			w := s.seq / perWindow
			windows[w] = append(windows[w], s.ns)
		}
	}
	var p99s []float64
	keys := slices.Sorted(maps.Keys(windows))
	for _, k := range keys {
		p99s = append(p99s, summarize(windows[k]).P99)
	}
	return median(p99s), p99s
}

func fail(res scenarioResult, err error) scenarioResult {
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// ---- S0 ------------------------------------------------------------------

func (d *driver) s0(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "anchor: one loopback write(2) of an event frame", Details: map[string]any{}}
	err := d.withServer(ctx, serverConfig{mode: "raw", rows: 10}, func(p *serverProc) error {
		frame, err := rawFrame(&Item{ID: 1, Name: itemName(1), Seq: 100000, TS: time.Now().UnixNano()})
		if err != nil {
			return err
		}
		size := len(frame) + 2 // an unmasked server frame under 126 bytes has a 2-byte header
		if len(frame) >= 126 {
			size += 2
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}
		}()
		defer func() { _ = ln.Close(); wg.Wait() }()
		var one, many anchorReply
		q := fmt.Sprintf("/ctl/anchor?addr=%s&count=%d&size=%d", ln.Addr(), d.cfg.s0Count, size)
		if err := p.call(ctx, http.MethodPost, q+"&batch=1", &one); err != nil {
			return err
		}
		if err := p.call(ctx, http.MethodPost, q+"&batch=16", &many); err != nil {
			return err
		}
		perCall := float64(one.CPUMicros) / float64(one.Calls)
		perFrame16 := float64(many.CPUMicros) / float64(many.Frames)
		d.writeCPU = perCall
		res.Details["frame_bytes"] = size
		res.Details["one_per_call"] = one
		res.Details["sixteen_per_writev"] = many
		c := fmt.Sprintf("%d B frame", size)
		res.Rows = append(res.Rows,
			row{Case: c, Metric: "server CPU per write(2)", Unit: "µs", Value: perCall, Status: "info"},
			row{Case: c, Metric: "wall time per write(2)", Unit: "µs", Value: float64(one.WallNs) / 1e3 / float64(one.Calls), Status: "info"},
			row{Case: c, Metric: "CPU per frame, 16 per writev(2)", Unit: "µs", Value: perFrame16,
				Baseline: perCall, BaselineName: "1 write/frame", Ratio: ratio(perFrame16, perCall), Status: "info"},
		)
		return nil
	})
	return fail(res, err)
}

// ---- S1 ------------------------------------------------------------------

type burstRun struct {
	Mode           string    `json:"mode"`
	N              int       `json:"n"`
	DeliveriesPerS []float64 `json:"deliveries_per_s"`
	CPUPerDelivery []float64 `json:"cpu_us_per_delivery"`
	Complete       bool      `json:"complete"`
	Tally          tally     `json:"tally"`
	ServerDrops    int64     `json:"server_drops"`
	FrameBytes     int       `json:"frame_bytes"`
	Messages       int64     `json:"ws_messages"` // WebSocket messages that carried the deliveries

	p        *serverProc
	f        *fleet
	expected int64
}

func (d *driver) s1(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "fan-out throughput: bursts of events to every subscriber of one stream vs raw melody Broadcast and centrifuge Publish", Details: map[string]any{}}
	var runs []*burstRun
	modes := d.fanOutModes()
	for _, n := range d.cfg.s1N {
		n = d.fitConns(fmt.Sprintf("S1 (%d fleets in one load generator)", len(modes)), len(modes)*n) / len(modes)
		byMode, err := d.bursts(ctx, n, modes)
		if err != nil {
			return fail(res, fmt.Errorf("with %d subscribers: %w", n, err))
		}
		lib, raw := byMode["lib"], byMode["raw"]
		runs = append(runs, lib, raw)
		c := fmt.Sprintf("N=%d", n)
		dl, dr := median(lib.DeliveriesPerS), median(raw.DeliveriesPerS)
		cl, cr := median(lib.CPUPerDelivery), median(raw.CPUPerDelivery)
		res.Rows = append(res.Rows,
			row{Case: c, Metric: "deliveries/s", Value: dl, Baseline: dr, BaselineName: "melody", Ratio: ratio(dl, dr), Target: ">= 1.0x", Status: status(dl >= dr)},
			row{Case: c, Metric: "server CPU per delivery", Unit: "µs", Value: cl, Baseline: cr, BaselineName: "melody", Ratio: ratio(cl, cr), Status: "info"},
			row{Case: c, Metric: "deliveries/s, coalesced writes", Value: dl, Baseline: dr, BaselineName: "melody", Ratio: ratio(dl, dr), Target: ">= 3.0x", Status: status(dl >= 3*dr)},
			row{Case: c, Metric: "silent drops", Value: float64(lib.Tally.SilentDrops), Baseline: float64(raw.Tally.SilentDrops), BaselineName: "melody",
				Target: "0 (or 1013)", Status: status(lib.Complete && lib.Tally.SilentDrops == 0)},
		)
		if cf := byMode[modeCentrifuge]; cf != nil {
			runs = append(runs, cf)
			dc, cc := median(cf.DeliveriesPerS), median(cf.CPUPerDelivery)
			res.Rows = append(res.Rows,
				row{Case: c, Metric: "deliveries/s", Value: dl, Baseline: dc, BaselineName: "centrifuge", Ratio: ratio(dl, dc), Target: ">= 1.0x", Status: status(dc > 0 && dl >= dc)},
				row{Case: c, Metric: "server CPU per delivery", Unit: "µs", Value: cl, Baseline: cc, BaselineName: "centrifuge", Ratio: ratio(cl, cc), Status: "info"},
				row{Case: c, Metric: "silent drops", Value: float64(lib.Tally.SilentDrops), Baseline: float64(cf.Tally.SilentDrops), BaselineName: "centrifuge", Status: "info"},
			)
			if !cf.Complete {
				res.Notes = append(res.Notes, fmt.Sprintf("N=%d: centrifuge did not deliver every burst: %d deliveries missing", n, cf.Tally.Missing))
			}
		}
		if d.writeCPU > 0 {
			res.Rows = append(res.Rows, row{Case: c, Metric: "CPU per delivery vs one write(2)", Unit: "µs", Value: cl, Baseline: d.writeCPU, BaselineName: "write(2)", Ratio: ratio(cl, d.writeCPU), Status: "info"})
		}
		if lib.Tally.Closed1013 > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("N=%d: %d subscribers closed with 1013", n, lib.Tally.Closed1013))
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("the %d servers run at once on the server CPU, each with its N subscribers; bursts rotate between them (medians of the repeats)", len(modes)))
	d.peerNote(&res)
	res.Details["runs"] = runs
	return res
}

// bursts connects n subscribers to a server of every mode, all running at
// once, and measures s1Repeat bursts of s1Events back-to-back writes on
// each, rotating the order, so that every server sees the same machine.
// It returns the runs by mode.
func (d *driver) bursts(ctx context.Context, n int, modes []string) (map[string]*burstRun, error) {
	const warm = 5
	var runs []*burstRun
	for _, mode := range modes {
		r := &burstRun{Mode: mode, N: n}
		runs = append(runs, r)
		var err error
		if r.p, err = d.startServer(ctx, serverConfig{mode: r.Mode, rows: 100}); err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		defer r.p.stop()
		if r.f, err = d.dial(ctx, r.p, n, dialOptions{subscribe: func(int) int { return 0 }}); err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		defer r.f.closeAll()
		if err := expectConns(ctx, r.p, n, n); err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		if _, err := r.p.writes(ctx, warm, 0, 1, 1, 0); err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		r.expected = int64(n * warm)
		if !r.f.waitFrames(ctx, r.expected, 20*time.Second) {
			return nil, fmt.Errorf("%s warm-up: %d of %d deliveries; %s", r.Mode, r.f.recv.Load(), r.expected, r.f.closes())
		}
		r.Complete = true
	}
	deliveries := float64(n * d.cfg.s1Events)
	timeout := burstTimeout(deliveries)
	for i := range d.cfg.s1Repeat {
		for j := range runs {
			r := runs[(i+j)%len(runs)]
			if !r.Complete {
				continue
			}
			st0, err := r.p.stats(ctx)
			if err != nil {
				return nil, err
			}
			w, err := r.p.writes(ctx, d.cfg.s1Events, 0, 1, 1, 0)
			if err != nil {
				return nil, err
			}
			r.expected += int64(deliveries)
			if !r.f.waitFrames(ctx, r.expected, timeout) {
				r.Complete = false
				d.logf("  %s N=%d: burst incomplete after %s: %d of %d deliveries; %s", r.Mode, n, timeout, r.f.recv.Load(), r.expected, r.f.closes())
				continue
			}
			end := r.f.lastFrameNs()
			st1, err := r.p.stats(ctx)
			if err != nil {
				return nil, err
			}
			r.DeliveriesPerS = append(r.DeliveriesPerS, deliveries/(float64(end-w.StartNs)/1e9))
			r.CPUPerDelivery = append(r.CPUPerDelivery, float64(st1.CPUMicros-st0.CPUMicros)/deliveries)
			d.logf("  %s N=%d: %.0f deliveries/s, %.2f µs CPU/delivery", r.Mode, n, r.DeliveriesPerS[len(r.DeliveriesPerS)-1], r.CPUPerDelivery[len(r.CPUPerDelivery)-1])
		}
	}
	byMode := map[string]*burstRun{}
	for _, r := range runs {
		st, err := r.p.stats(ctx)
		if err != nil {
			return nil, err
		}
		r.ServerDrops = st.Drops
		r.f.closeAll()
		r.Tally = r.f.count(int64(warm+d.cfg.s1Repeat*d.cfg.s1Events), nil)
		r.Messages = r.f.msgs.Load()
		d.logf("  %s N=%d: %d deliveries in %d WebSocket messages", r.Mode, n, r.Tally.Frames, r.Messages)
		frame, _ := rawFrame(&Item{ID: 1, Name: itemName(1), Seq: r.expected / int64(n), TS: time.Now().UnixNano()})
		r.FrameBytes = len(frame)
		byMode[r.Mode] = r
	}
	return byMode, nil
}

// burstTimeout is how long a burst of deliveries may take to arrive: 30 s,
// plus a second per 50k deliveries (S9's 2M at 20k subscribers on a busy
// machine).
func burstTimeout(deliveries float64) time.Duration {
	return 30*time.Second + time.Duration(deliveries/50e3*float64(time.Second))
}

// ---- S2 ------------------------------------------------------------------

type latencyRun struct {
	Mode     string    `json:"mode"`
	N        int       `json:"n"`
	Rate     float64   `json:"writes_per_s"`
	Events   int       `json:"events"`
	Latency  latencies `json:"latency"`
	CPUPerEv float64   `json:"cpu_us_per_event"`
	Tally    tally     `json:"tally"`
}

func (d *driver) s2(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "commit-to-delivered latency vs raw melody Broadcast and centrifuge Publish right after the commit", Details: map[string]any{}}
	if d.writeCPU == 0 && slices.ContainsFunc(d.cfg.s2Cases, func(c s2Case) bool { return c.n > 1000 }) {
		// The target above 1k subscribers is relative to S0's write(2).
		if s0 := d.s0(ctx); s0.Error != "" {
			res.Notes = append(res.Notes, "S0 (for the target above 1k subscribers) failed: "+s0.Error)
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("S0 measured for the target above 1k subscribers: %.2f µs per write(2)", d.writeCPU))
		}
	}
	var runs []latencyRun
	for _, sc := range d.cfg.s2Cases {
		n := d.fitConns("S2", sc.n)
		byMode := map[string]latencyRun{}
		for _, mode := range d.fanOutModes() {
			r, err := d.latencyRun(ctx, mode, n, sc.rate, sc.seconds)
			if err != nil {
				return fail(res, fmt.Errorf("%s with %d subscribers: %w", mode, n, err))
			}
			byMode[mode] = r
			runs = append(runs, r)
		}
		lib, raw := byMode["lib"], byMode["raw"]
		// Up to 1k subscribers the target is absolute; above, it is what
		// writing the event to every subscriber with one write(2) each
		// costs the server CPU in this run (S0), with 50% headroom.
		target, targetText := 20.0, "<= 20 ms"
		if n > 1000 {
			target = 1.5 * float64(n) * d.writeCPU / 1e3
			targetText = fmt.Sprintf("<= 1.5 x N x write(2) = %.3g ms", target)
		}
		c := fmt.Sprintf("N=%d, %g/s", n, sc.rate)
		res.Rows = append(res.Rows,
			row{Case: c, Metric: "p99", Unit: "ms", Value: lib.Latency.P99, Baseline: raw.Latency.P99, BaselineName: "melody", Ratio: ratio(lib.Latency.P99, raw.Latency.P99),
				Target: targetText, Status: status(target > 0 && lib.Latency.P99 <= target && lib.Latency.N > 0)},
			row{Case: c, Metric: "p50", Unit: "ms", Value: lib.Latency.P50, Baseline: raw.Latency.P50, BaselineName: "melody", Ratio: ratio(lib.Latency.P50, raw.Latency.P50), Status: "info"},
			row{Case: c, Metric: "max", Unit: "ms", Value: lib.Latency.Max, Baseline: raw.Latency.Max, BaselineName: "melody", Ratio: ratio(lib.Latency.Max, raw.Latency.Max), Status: "info"},
			row{Case: c, Metric: "server CPU per event", Unit: "µs", Value: lib.CPUPerEv, Baseline: raw.CPUPerEv, BaselineName: "melody", Ratio: ratio(lib.CPUPerEv, raw.CPUPerEv), Status: "info"},
			row{Case: c, Metric: "silent drops", Value: float64(lib.Tally.SilentDrops), Baseline: float64(raw.Tally.SilentDrops), BaselineName: "melody", Target: "0", Status: status(lib.Tally.SilentDrops == 0)},
		)
		if cf, ok := byMode[modeCentrifuge]; ok {
			res.Rows = append(res.Rows,
				row{Case: c, Metric: "p99", Unit: "ms", Value: lib.Latency.P99, Baseline: cf.Latency.P99, BaselineName: "centrifuge", Ratio: ratio(lib.Latency.P99, cf.Latency.P99), Status: "info"},
				row{Case: c, Metric: "p50", Unit: "ms", Value: lib.Latency.P50, Baseline: cf.Latency.P50, BaselineName: "centrifuge", Ratio: ratio(lib.Latency.P50, cf.Latency.P50), Status: "info"},
				row{Case: c, Metric: "server CPU per event", Unit: "µs", Value: lib.CPUPerEv, Baseline: cf.CPUPerEv, BaselineName: "centrifuge", Ratio: ratio(lib.CPUPerEv, cf.CPUPerEv), Status: "info"},
				row{Case: c, Metric: "silent drops", Value: float64(lib.Tally.SilentDrops), Baseline: float64(cf.Tally.SilentDrops), BaselineName: "centrifuge", Status: "info"},
			)
		}
	}
	d.peerNote(&res)
	res.Details["runs"] = runs
	return res
}

func (d *driver) latencyRun(ctx context.Context, mode string, n int, rate, seconds float64) (latencyRun, error) {
	r := latencyRun{Mode: mode, N: n, Rate: rate, Events: max(int(rate*seconds), 1)}
	err := d.withServer(ctx, serverConfig{mode: mode, rows: 100}, func(p *serverProc) error {
		f, err := d.dial(ctx, p, n, dialOptions{subscribe: func(int) int { return 0 }})
		if err != nil {
			return err
		}
		defer f.closeAll()
		if err := expectConns(ctx, p, n, n); err != nil {
			return err
		}
		const warm = 2
		w, err := p.writes(ctx, warm, 0, 1, 1, 0)
		if err != nil {
			return err
		}
		if !f.waitFrames(ctx, int64(n*warm), 20*time.Second) {
			return fmt.Errorf("warm-up: %d of %d frames", f.recv.Load(), n*warm)
		}
		f.minSeq.Store(w.LastSeq + 1)
		w, err = p.writes(ctx, r.Events, rate, 1, 1, 0)
		if err != nil {
			return err
		}
		f.waitFrames(ctx, int64(n*(warm+r.Events)), 20*time.Second)
		r.CPUPerEv = float64(w.CPUMicros) / float64(r.Events)
		f.closeAll()
		r.Tally = f.count(int64(warm+r.Events), nil)
		r.Latency = summarize(f.latencies(nil))
		d.logf("  %s N=%d: p50 %.2f ms p99 %.2f ms max %.2f ms", mode, n, r.Latency.P50, r.Latency.P99, r.Latency.Max)
		return nil
	})
	return r, err
}

// ---- S3 ------------------------------------------------------------------

// s3Window is how many back-to-back writes S3 makes before it waits for
// their delivery: below the queue size, since one goroutine writing back to
// back on a single P can outrun the connections' writers, which closes
// them with 1013 (and would measure that instead).
const s3Window = 100

func (d *driver) s3(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "selective routing: CPU per event matching a few subscribers among many connections", Details: map[string]any{}}
	n, match := d.fitConns("S3", d.cfg.s3N), d.cfg.s3Match
	groups := n / match // pks 1..groups, match subscribers each
	if groups < 2 {
		return fail(res, fmt.Errorf("s3 needs at least 2*%d connections, got %d", match, n))
	}
	n = groups * match
	details := map[string]float64{}
	err := d.withServer(ctx, serverConfig{mode: "lib", rows: groups + 10}, func(p *serverProc) error {
		matching, err := d.dial(ctx, p, match, dialOptions{subscribe: func(int) int { return 1 }})
		if err != nil {
			return err
		}
		defer matching.closeAll()
		if err := expectConns(ctx, p, match, match); err != nil {
			return err
		}
		events := d.cfg.s3Events
		expected := int64(0)
		// measure runs events in windows of s3Window back-to-back writes
		// after a forced GC, so that every phase starts at the same point
		// of the GC cycle. The median window is the routing cost; the mean
		// includes any GC cycle that fell in a window.
		measure := func(name string) error {
			if _, err := p.mem(ctx); err != nil { // runtime.GC
				return err
			}
			var perEvent []float64
			var cpu, wall int64
			for done := 0; done < events; done += s3Window {
				k := min(s3Window, events-done)
				st0, err := p.stats(ctx)
				if err != nil {
					return err
				}
				w, err := p.writes(ctx, k, 0, 1, 1, 0)
				if err != nil {
					return err
				}
				expected += int64(match * k)
				if !matching.waitFrames(ctx, expected, 20*time.Second) {
					return fmt.Errorf("%s: %d of %d frames; %s", name, matching.recv.Load(), expected, matching.closes())
				}
				st1, err := p.stats(ctx)
				if err != nil {
					return err
				}
				perEvent = append(perEvent, float64(st1.CPUMicros-st0.CPUMicros)/float64(k))
				cpu += st1.CPUMicros - st0.CPUMicros
				wall += w.EndNs - w.StartNs
			}
			details[name+"_cpu_us_per_event_median_window"] = median(perEvent)
			details[name+"_cpu_us_per_event_mean"] = float64(cpu) / float64(events)
			details[name+"_events_per_s"] = float64(events) / (float64(wall) / 1e9)
			d.logf("  %s: %.1f µs CPU/event (median window), %.1f (mean)", name, median(perEvent), float64(cpu)/float64(events))
			return nil
		}
		if _, err := p.writes(ctx, 50, 0, 1, 1, 0); err != nil { // warm-up
			return err
		}
		expected = int64(match * 50)
		if !matching.waitFrames(ctx, expected, 20*time.Second) {
			return errors.New("warm-up frames missing")
		}
		if err := measure("only_matching_before"); err != nil {
			return err
		}
		// The others: match subscribers on each of pks 2..groups.
		others, err := d.dial(ctx, p, n-match, dialOptions{subscribe: func(i int) int { return 2 + i%(groups-1) }})
		if err != nil {
			return err
		}
		if err := expectConns(ctx, p, n, n); err != nil {
			others.closeAll()
			return err
		}
		if err := measure("all_connected"); err != nil {
			others.closeAll()
			return err
		}
		if others.recv.Load() != 0 {
			others.closeAll()
			return fmt.Errorf("%d frames reached connections the events did not match", others.recv.Load())
		}
		others.closeAll()
		if err := expectConns(ctx, p, match, match); err != nil {
			return err
		}
		return measure("only_matching_after")
	})
	if err != nil {
		return fail(res, err)
	}
	med := func(name string) float64 { return details[name+"_cpu_us_per_event_median_window"] }
	mean := func(name string) float64 { return details[name+"_cpu_us_per_event_mean"] }
	base := (med("only_matching_before") + med("only_matching_after")) / 2
	all := med("all_connected")
	baseMean := (mean("only_matching_before") + mean("only_matching_after")) / 2
	allMean := mean("all_connected")
	c := fmt.Sprintf("N=%d, %d match", n, match)
	baseName := fmt.Sprintf("only %d connected", match)
	res.Rows = append(res.Rows,
		row{Case: c, Metric: "server CPU per event (median window)", Unit: "µs", Value: all,
			Baseline: base, BaselineName: baseName, Ratio: ratio(all, base), Target: "<= 1.2x", Status: status(all <= 1.2*base)},
		row{Case: c, Metric: "server CPU per event (mean, with GC)", Unit: "µs", Value: allMean,
			Baseline: baseMean, BaselineName: baseName, Ratio: ratio(allMean, baseMean), Status: "info"},
	)
	res.Details["measurements"] = details
	res.Notes = append(res.Notes, fmt.Sprintf("CPU per event includes the SQLite update and the read-back of the row; windows of %d events after a forced GC; the baseline is the mean of a phase before the others connect and one after they left", s3Window))
	d.s3Result = s3Figure{n: n, match: match, cpu: all}
	return res
}

// ---- S8 ------------------------------------------------------------------

// s8Kind is one of S8's two kinds of subscription, by the stream its
// updates go to.
type s8Kind struct{ name, stream string }

var s8Kinds = [2]s8Kind{{"per_pk", streamName}, {"live_query", qStreamName}}

// s8 measures live queries (PROTOCOL.md 9) against S3's per-pk
// subscriptions, on the same connections: each subscribes to the updates of
// one pk of items, as in S3, and holds a live query of qitems (the same
// rows, on a stream with a filter on id) selecting the row with the same
// id, so that an update of either matches s3Match connections. Windows of
// updates of the two alternate, so that both see the same machine.
func (d *driver) s8(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "live queries: CPU per event routed among many live queries vs per-pk subscriptions (S3), on the same connections", Details: map[string]any{}}
	n, match := d.fitConns("S8", d.cfg.s3N), d.cfg.s3Match
	groups := n / match // ids 1..groups, match live queries each
	if groups < 2 {
		return fail(res, fmt.Errorf("s8 needs at least 2*%d connections, got %d", match, n))
	}
	n = groups * match
	details := map[string]float64{}
	subscribe := func(id func(int) int) dialOptions { return dialOptions{subscribe: id, list: id} }
	err := d.withServer(ctx, serverConfig{mode: "lib", rows: groups + 10, queries: true}, func(p *serverProc) error {
		var matching *fleet // nil: nobody subscribed, nothing to wait for
		expected := int64(0)
		write := func(kind s8Kind, k int) (float64, error) {
			st0, err := p.stats(ctx)
			if err != nil {
				return 0, err
			}
			if _, err := p.writesOf(ctx, kind.stream, k, 1); err != nil {
				return 0, err
			}
			if matching != nil {
				expected += int64(match * k)
				if !matching.waitFrames(ctx, expected, 20*time.Second) {
					return 0, fmt.Errorf("%s: %d of %d frames; %s", kind.name, matching.recv.Load(), expected, matching.closes())
				}
			}
			st1, err := p.stats(ctx)
			if err != nil {
				return 0, err
			}
			return float64(st1.CPUMicros - st0.CPUMicros), nil
		}
		// measure runs s3Events updates of each kind in windows of
		// s3Window, the kinds alternating (and which goes first), after a
		// forced GC.
		measure := func(phase string) error {
			if _, err := p.mem(ctx); err != nil { // runtime.GC
				return err
			}
			perEvent := map[string][]float64{}
			var ratios []float64
			for w, done := 0, 0; done < d.cfg.s3Events; w, done = w+1, done+s3Window {
				k := min(s3Window, d.cfg.s3Events-done)
				cpu := map[string]float64{}
				for j := range s8Kinds {
					kind := s8Kinds[(w+j)%2]
					us, err := write(kind, k)
					if err != nil {
						return fmt.Errorf("%s: %w", phase, err)
					}
					cpu[kind.name] = us / float64(k)
					perEvent[kind.name] = append(perEvent[kind.name], us/float64(k))
				}
				ratios = append(ratios, ratio(cpu["live_query"], cpu["per_pk"]))
			}
			for _, kind := range s8Kinds {
				details[phase+"_"+kind.name+"_cpu_us_per_event_median_window"] = median(perEvent[kind.name])
			}
			details[phase+"_ratio_median_of_windows"] = median(ratios)
			d.logf("  %s: %.1f µs CPU/event live query, %.1f per pk (median windows); median window ratio %.2f", phase,
				median(perEvent["live_query"]), median(perEvent["per_pk"]), median(ratios))
			return nil
		}
		// Without subscribers nothing is delivered: what an update costs
		// the writer, capture included, on each stream.
		if err := measure("no_subscriber"); err != nil {
			return err
		}
		var err error
		if matching, err = d.dial(ctx, p, match, subscribe(func(int) int { return 1 })); err != nil {
			return err
		}
		defer matching.closeAll()
		if err := expectConns(ctx, p, match, match); err != nil {
			return err
		}
		for _, kind := range s8Kinds { // warm-up
			if _, err := write(kind, 50); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
		if err := measure("only_matching"); err != nil {
			return err
		}
		others, err := d.dial(ctx, p, n-match, subscribe(func(i int) int { return 2 + i%(groups-1) }))
		if err != nil {
			return err
		}
		defer others.closeAll()
		if err := expectConns(ctx, p, n, n); err != nil {
			return err
		}
		if err := measure("all_connected"); err != nil {
			return err
		}
		if others.recv.Load() != 0 {
			return fmt.Errorf("%d frames reached connections the events did not match", others.recv.Load())
		}
		return nil
	})
	if err != nil {
		return fail(res, err)
	}
	med := func(phase, kind string) float64 { return details[phase+"_"+kind+"_cpu_us_per_event_median_window"] }
	lq, pk := med("all_connected", "live_query"), med("all_connected", "per_pk")
	lq10, pk10 := med("only_matching", "live_query"), med("only_matching", "per_pk")
	lq0, pk0 := med("no_subscriber", "live_query"), med("no_subscriber", "per_pk")
	c := fmt.Sprintf("N=%d, %d match", n, match)
	res.Rows = append(res.Rows,
		row{Case: c, Metric: "server CPU per event, live query (median window)", Unit: "µs", Value: lq,
			Baseline: pk, BaselineName: "per pk, same conns", Ratio: ratio(lq, pk), Target: "<= 1.2x", Status: status(lq <= 1.2*pk)},
		row{Case: c, Metric: "... median of the windows' own ratios", Value: details["all_connected_ratio_median_of_windows"], Status: "info"},
		row{Case: c, Metric: "server CPU per event, live query, vs only matching connected", Unit: "µs", Value: lq,
			Baseline: lq10, BaselineName: fmt.Sprintf("only %d connected", match), Ratio: ratio(lq, lq10), Status: "info"},
		row{Case: fmt.Sprintf("only %d connected", match), Metric: "server CPU per event, live query", Unit: "µs", Value: lq10,
			Baseline: pk10, BaselineName: "per pk", Ratio: ratio(lq10, pk10), Status: "info"},
		row{Case: "no subscriber", Metric: "server CPU per update of qitems (no filtered column assigned: no read before)", Unit: "µs", Value: lq0,
			Baseline: pk0, BaselineName: "items", Ratio: ratio(lq0, pk0), Status: "info"},
	)
	if d.s3Result.n == n && d.s3Result.match == match {
		res.Rows = append(res.Rows, row{Case: c, Metric: "server CPU per event, live query, vs S3 of this run", Unit: "µs", Value: lq,
			Baseline: d.s3Result.cpu, BaselineName: "S3", Ratio: ratio(lq, d.s3Result.cpu), Status: "info"})
	}
	res.Details["measurements"] = details
	res.Notes = append(res.Notes, fmt.Sprintf("every connection subscribes to the updates of one pk of items and holds a live query {\"id\": pk} of qitems (the same rows; its ViewSet declares a filter on id; the updates assign seq, ts and pad, which no filter reads, so the capture does not read the rows before them: an update of a filtered column would); CPU per event includes the SQLite update; windows of %d updates, items and qitems alternating, after a forced GC per phase; first with no subscriber (nothing delivered: the writer and its capture), then with the matching connections, then with all", s3Window))
	return res
}

// ---- S4 ------------------------------------------------------------------

var crudOps = []string{"create", "retrieve", "list", "update", "delete"}

// crudTally is the outcome of one transport's CRUD loops.
type crudTally struct {
	Requests int                  `json:"requests"`
	Errors   int                  `json:"errors"`
	Seconds  float64              `json:"seconds"`
	PerS     float64              `json:"requests_per_s"`
	All      latencies            `json:"latency"`
	Ops      map[string]latencies `json:"ops"`
	samples  map[string][]int64
}

func (t *crudTally) add(op string, dt time.Duration, ok bool) {
	t.Requests++
	if !ok {
		t.Errors++
	}
	t.samples[op] = append(t.samples[op], int64(dt))
}

func (t *crudTally) merge(o *crudTally) {
	t.Requests += o.Requests
	t.Errors += o.Errors
	for op, s := range o.samples {
		t.samples[op] = append(t.samples[op], s...)
	}
}

func (t *crudTally) finish() {
	t.PerS = float64(t.Requests) / t.Seconds
	t.Ops = map[string]latencies{}
	var all []int64
	for op, s := range t.samples {
		all = append(all, s...)
		t.Ops[op] = summarize(s)
	}
	t.All = summarize(all)
}

func newCrudTally() *crudTally { return &crudTally{samples: map[string][]int64{}} }

func (d *driver) s4(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "CRUD over the WebSocket vs the same actions over REST (Gin), same client process", Details: map[string]any{}}
	conns := d.cfg.s4Conns
	ws, rest := newCrudTally(), newCrudTally()
	err := d.withServer(ctx, serverConfig{mode: "lib", rows: 1000, unlimited: true}, func(p *serverProc) error {
		hc := restClient(conns)
		defer hc.CloseIdleConnections()
		round := time.Duration(d.cfg.s4Seconds / 2 * float64(time.Second))
		for range 2 {
			t, err := d.crudRound(ctx, conns, round, func(stop time.Time, t *crudTally) error { return wsCRUD(ctx, p.wsURL(), stop, t) })
			if err != nil {
				return fmt.Errorf("websocket: %w", err)
			}
			ws.merge(t)
			ws.Seconds += t.Seconds
			t, err = d.crudRound(ctx, conns, round, func(stop time.Time, t *crudTally) error { return restCRUD(ctx, hc, p.url(""), stop, t) })
			if err != nil {
				return fmt.Errorf("rest: %w", err)
			}
			rest.merge(t)
			rest.Seconds += t.Seconds
		}
		return nil
	})
	if err != nil {
		return fail(res, err)
	}
	ws.finish()
	rest.finish()
	c := fmt.Sprintf("%d conns", conns)
	res.Rows = append(res.Rows,
		row{Case: c, Metric: "requests/s", Value: ws.PerS, Baseline: rest.PerS, BaselineName: "REST", Ratio: ratio(ws.PerS, rest.PerS), Target: ">= 1.0x", Status: status(ws.PerS >= rest.PerS)},
		row{Case: c, Metric: "p99", Unit: "ms", Value: ws.All.P99, Baseline: rest.All.P99, BaselineName: "REST", Ratio: ratio(ws.All.P99, rest.All.P99), Status: "info"},
		row{Case: c, Metric: "p50", Unit: "ms", Value: ws.All.P50, Baseline: rest.All.P50, BaselineName: "REST", Ratio: ratio(ws.All.P50, rest.All.P50), Status: "info"},
	)
	for _, op := range crudOps {
		res.Rows = append(res.Rows, row{Case: op, Metric: "p99", Unit: "ms", Value: ws.Ops[op].P99, Baseline: rest.Ops[op].P99, BaselineName: "REST", Ratio: ratio(ws.Ops[op].P99, rest.Ops[op].P99), Status: "info"})
	}
	if ws.Errors+rest.Errors > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("unexpected statuses: %d WebSocket, %d REST", ws.Errors, rest.Errors))
	}
	res.Notes = append(res.Notes, "the S4 server lifts the per-connection rate limit (WithRateLimit), whose default of 50 messages/s would answer 429; SQLite runs with one open connection")
	res.Details["websocket"], res.Details["rest"] = ws, rest
	return res
}

// crudRound runs conns workers for d and merges their tallies.
func (d *driver) crudRound(ctx context.Context, conns int, dur time.Duration, worker func(stop time.Time, t *crudTally) error) (*crudTally, error) {
	total := newCrudTally()
	tallies := make([]*crudTally, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	t0 := time.Now()
	stop := t0.Add(dur)
	for i := range conns {
		tallies[i] = newCrudTally()
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = worker(stop, tallies[i])
		}()
	}
	wg.Wait()
	total.Seconds = time.Since(t0).Seconds()
	for _, t := range tallies {
		total.merge(t)
	}
	return total, errors.Join(errs...)
}

var (
	statusKey = []byte(`"response_status":`)
	idKey     = []byte(`"id":`)
)

// wsCRUD loops create, retrieve, list(20), update, delete on one socket.
func wsCRUD(ctx context.Context, url string, stop time.Time, t *crudTally) error {
	conn, resp, err := (&websocket.Dialer{HandshakeTimeout: 10 * time.Second}).DialContext(ctx, url, nil)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	defer conn.Close()
	rid := 0
	do := func(op, payload string, want int64) ([]byte, error) {
		rid++
		frame := `{"stream":"` + streamName + `","payload":{` + payload + `,"request_id":` + strconv.Itoa(rid) + `}}`
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		t0 := time.Now()
		if err := conn.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
			return nil, err
		}
		_, reply, err := conn.ReadMessage()
		if err != nil {
			return nil, err
		}
		t.add(op, time.Since(t0), intAfter(reply, statusKey) == want)
		return reply, nil
	}
	for time.Now().Before(stop) {
		reply, err := do("create", `"action":"create","data":{"name":"bench","pad":""}`, 201)
		if err != nil {
			return err
		}
		id := strconv.FormatInt(intAfter(reply, idKey), 10)
		for _, s := range []struct {
			op, payload string
			want        int64
		}{
			{"retrieve", `"action":"retrieve","pk":` + id, 200},
			{"list", `"action":"list","data":{"page_size":20}`, 200},
			{"update", `"action":"update","pk":` + id + `,"data":{"name":"bench2","pad":""}`, 200},
			{"delete", `"action":"delete","pk":` + id, 200},
		} {
			if _, err := do(s.op, s.payload, s.want); err != nil {
				return err
			}
		}
	}
	return nil
}

// restCRUD loops the same actions over REST.
func restCRUD(ctx context.Context, hc *http.Client, base string, stop time.Time, t *crudTally) error {
	do := func(op, method, path, body string, want int) ([]byte, error) {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
		if err != nil {
			return nil, err
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		t0 := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return nil, err
		}
		t.add(op, time.Since(t0), resp.StatusCode == want)
		return b, nil
	}
	for time.Now().Before(stop) {
		b, err := do("create", http.MethodPost, "/"+streamName, `{"name":"bench","pad":""}`, 201)
		if err != nil {
			return err
		}
		item := "/" + streamName + "/" + strconv.FormatInt(intAfter(b, idKey), 10)
		for _, s := range []struct {
			op, method, path, body string
			want                   int
		}{
			{"retrieve", http.MethodGet, item, "", 200},
			{"list", http.MethodGet, "/" + streamName + "?page_size=20", "", 200},
			{"update", http.MethodPut, item, `{"name":"bench2","pad":""}`, 200},
			{"delete", http.MethodDelete, item, "", 204},
		} {
			if _, err := do(s.op, s.method, s.path, s.body, s.want); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- S5 ------------------------------------------------------------------

type memRun struct {
	Mode          string   `json:"mode"`
	N             int      `json:"n"`
	Before        memReply `json:"before"`
	After         memReply `json:"after"`
	PerConnHeap   float64  `json:"heap_per_conn"`
	PerConnStack  float64  `json:"stack_per_conn"`
	PerConn       float64  `json:"heap_stack_per_conn"`
	PerConnRSS    float64  `json:"rss_per_conn"`
	GoroutinesPer float64  `json:"goroutines_per_conn"`
}

func (d *driver) s5(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "memory per idle subscribed connection vs raw melody idle connections and idle centrifuge subscribers", Details: map[string]any{}}
	n := d.fitConns("S5", d.cfg.s5N)
	runs := map[string]memRun{}
	modes := []string{"lib", "raw", "raw-default"}
	if d.peer.exe != "" {
		modes = append(modes, modeCentrifuge)
	}
	for _, mode := range modes {
		r := memRun{Mode: mode, N: n}
		err := d.withServer(ctx, serverConfig{mode: mode, rows: 10}, func(p *serverProc) error {
			var err error
			if r.Before, err = p.mem(ctx); err != nil {
				return err
			}
			f, err := d.dial(ctx, p, n, dialOptions{subscribe: func(int) int { return 0 }})
			if err != nil {
				return err
			}
			defer f.closeAll()
			if err := expectConns(ctx, p, n, n); err != nil {
				return err
			}
			time.Sleep(300 * time.Millisecond)
			r.After, err = p.mem(ctx)
			return err
		})
		if err != nil {
			return fail(res, fmt.Errorf("%s: %w", mode, err))
		}
		per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
		r.PerConnHeap = per(r.After.HeapAlloc, r.Before.HeapAlloc)
		r.PerConnStack = per(r.After.StackInuse, r.Before.StackInuse)
		r.PerConn = r.PerConnHeap + r.PerConnStack
		r.PerConnRSS = per(r.After.RSS, r.Before.RSS)
		r.GoroutinesPer = float64(r.After.Goroutines-r.Before.Goroutines) / float64(n)
		d.logf("  %s: %.0f B heap + %.0f B stack per connection", mode, r.PerConnHeap, r.PerConnStack)
		runs[mode] = r
	}
	lib, raw, def := runs["lib"], runs["raw"], runs["raw-default"]
	c := fmt.Sprintf("N=%d", n)
	kib := func(v float64) float64 { return v / 1024 }
	res.Rows = append(res.Rows,
		row{Case: c, Metric: "heap+stack per connection", Unit: "KiB", Value: kib(lib.PerConn), Target: "<= 24 KiB", Status: status(lib.PerConn <= 24*1024)},
		row{Case: c, Metric: "heap+stack per connection", Unit: "KiB", Value: kib(lib.PerConn), Baseline: kib(raw.PerConn), BaselineName: "melody, same settings",
			Ratio: ratio(lib.PerConn, raw.PerConn), Target: "<= raw + 2 KiB", Status: status(lib.PerConn <= raw.PerConn+2048)},
		row{Case: c, Metric: "heap+stack per connection", Unit: "KiB", Value: kib(lib.PerConn), Baseline: kib(def.PerConn), BaselineName: "melody.New() defaults",
			Ratio: ratio(lib.PerConn, def.PerConn), Status: "info"},
		row{Case: c, Metric: "heap per connection", Unit: "KiB", Value: kib(lib.PerConnHeap), Baseline: kib(raw.PerConnHeap), BaselineName: "melody, same settings", Ratio: ratio(lib.PerConnHeap, raw.PerConnHeap), Status: "info"},
		row{Case: c, Metric: "stack per connection", Unit: "KiB", Value: kib(lib.PerConnStack), Baseline: kib(raw.PerConnStack), BaselineName: "melody, same settings", Ratio: ratio(lib.PerConnStack, raw.PerConnStack), Status: "info"},
		row{Case: c, Metric: "RSS per connection", Unit: "KiB", Value: kib(lib.PerConnRSS), Baseline: kib(raw.PerConnRSS), BaselineName: "melody, same settings", Ratio: ratio(lib.PerConnRSS, raw.PerConnRSS), Status: "info"},
	)
	if cf, ok := runs[modeCentrifuge]; ok {
		res.Rows = append(res.Rows,
			row{Case: c, Metric: "heap+stack per connection", Unit: "KiB", Value: kib(lib.PerConn), Baseline: kib(cf.PerConn), BaselineName: "centrifuge",
				Ratio: ratio(lib.PerConn, cf.PerConn), Target: "<= centrifuge", Status: status(lib.PerConn <= cf.PerConn)},
			row{Case: c, Metric: "heap per connection", Unit: "KiB", Value: kib(lib.PerConnHeap), Baseline: kib(cf.PerConnHeap), BaselineName: "centrifuge", Ratio: ratio(lib.PerConnHeap, cf.PerConnHeap), Status: "info"},
			row{Case: c, Metric: "stack per connection", Unit: "KiB", Value: kib(lib.PerConnStack), Baseline: kib(cf.PerConnStack), BaselineName: "centrifuge", Ratio: ratio(lib.PerConnStack, cf.PerConnStack), Status: "info"},
			row{Case: c, Metric: "RSS per connection", Unit: "KiB", Value: kib(lib.PerConnRSS), Baseline: kib(cf.PerConnRSS), BaselineName: "centrifuge", Ratio: ratio(lib.PerConnRSS, cf.PerConnRSS), Status: "info"},
		)
	}
	d.peerNote(&res)
	res.Details["runs"] = runs
	return res
}

// ---- S6 ------------------------------------------------------------------

type stallRun struct {
	Name       string    `json:"name"`
	Mode       string    `json:"mode"`
	N          int       `json:"n"`
	Stalled    int       `json:"stalled"`
	Events     int       `json:"events"`
	Healthy    latencies `json:"healthy_latency"`
	WindowP99  float64   `json:"healthy_p99_ms_median_1s_window"`
	WindowP99s []float64 `json:"healthy_p99_ms_1s_windows"`
	HealthyT   tally     `json:"healthy"`
	StalledT   tally     `json:"stalled_tally"`
	ServerDrop int64     `json:"server_drops"`
}

func (d *driver) s6(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "slow-consumer isolation: 1% of subscribers stop reading", Details: map[string]any{}}
	n := d.fitConns("S6", d.cfg.s6N)
	isStalled := func(i int) bool { return i%100 == 50 }
	type variant struct {
		name, mode string
		stall      bool
	}
	// The baseline runs before and after the stalled run; their mean is the
	// baseline, so that drift on a shared machine hits both sides.
	variants := []variant{{"no stalls", "lib", false}, {"1% stalled", "lib", true}, {"no stalls, after", "lib", false}}
	if d.cfg.s6Raw {
		variants = append(variants, variant{"1% stalled, melody", "raw", true})
	}
	runs := map[string]stallRun{}
	for _, v := range variants {
		stalled := isStalled
		if !v.stall {
			stalled = func(int) bool { return false }
		}
		r, err := d.stallRun(ctx, v.name, v.mode, n, stalled, isStalled)
		if err != nil {
			return fail(res, fmt.Errorf("%s: %w", v.name, err))
		}
		runs[v.name] = r
	}
	before, after, st := runs["no stalls"], runs["no stalls, after"], runs["1% stalled"]
	baseP99 := (before.Healthy.P99 + after.Healthy.P99) / 2
	baseP50 := (before.Healthy.P50 + after.Healthy.P50) / 2
	baseW := (before.WindowP99 + after.WindowP99) / 2
	c := fmt.Sprintf("N=%d, %d stalled", n, st.Stalled)
	res.Rows = append(res.Rows,
		row{Case: c, Metric: "healthy p99 (median of 1 s windows)", Unit: "ms", Value: st.WindowP99, Baseline: baseW, BaselineName: "no stalls", Ratio: ratio(st.WindowP99, baseW),
			Target: "<= 1.2x", Status: status(st.WindowP99 <= 1.2*baseW)},
		row{Case: c, Metric: "healthy p99 (whole run)", Unit: "ms", Value: st.Healthy.P99, Baseline: baseP99, BaselineName: "no stalls", Ratio: ratio(st.Healthy.P99, baseP99), Status: "info"},
		row{Case: c, Metric: "healthy p50", Unit: "ms", Value: st.Healthy.P50, Baseline: baseP50, BaselineName: "no stalls", Ratio: ratio(st.Healthy.P50, baseP50), Status: "info"},
		row{Case: c, Metric: "stalled closed with 1013", Value: float64(st.StalledT.Closed1013), Baseline: float64(st.Stalled), BaselineName: "stalled",
			Target: "all", Status: status(st.StalledT.Closed1013 == st.Stalled)},
		row{Case: c, Metric: "silent drops", Value: float64(st.HealthyT.SilentDrops + st.StalledT.SilentDrops), Target: "0",
			Status: status(st.HealthyT.SilentDrops+st.StalledT.SilentDrops+before.HealthyT.SilentDrops+after.HealthyT.SilentDrops == 0)},
	)
	if raw, ok := runs["1% stalled, melody"]; ok {
		// Frames the clients never got (melody's own count of dropped
		// frames, ServerDrop, counts the same frames).
		res.Rows = append(res.Rows, row{Case: c, Metric: "silent drops, raw melody", Value: float64(raw.HealthyT.SilentDrops + raw.StalledT.SilentDrops), Status: "info"})
	}
	res.Notes = append(res.Notes, fmt.Sprintf("writes at %g/s for %gs with %d B of padding per row; stalled readers set SO_RCVBUF 4096 and resume after the writes; the server sets SO_SNDBUF %d on accepted sockets (0 = kernel autotuning, up to tcp_wmem max: ~4 MiB, ~14k frames per stalled socket on loopback)",
		d.cfg.s6Rate, d.cfg.s6Seconds, d.cfg.s6Pad, d.cfg.s6Sndbuf))
	res.Details["runs"] = runs
	return res
}

func (d *driver) stallRun(ctx context.Context, name, mode string, n int, stalled, group func(int) bool) (stallRun, error) {
	r := stallRun{Name: name, Mode: mode, N: n, Events: max(int(d.cfg.s6Rate*d.cfg.s6Seconds), 1)}
	for i := range n {
		if stalled(i) {
			r.Stalled++
		}
	}
	err := d.withServer(ctx, serverConfig{mode: mode, rows: 100, sndbuf: d.cfg.s6Sndbuf}, func(p *serverProc) error {
		f, err := d.dial(ctx, p, n, dialOptions{subscribe: func(int) int { return 0 }, stalled: stalled, stallRcvBuf: 4096})
		if err != nil {
			return err
		}
		defer f.closeAll()
		if err := expectConns(ctx, p, n, n); err != nil {
			return err
		}
		const warm = 2
		w, err := p.writes(ctx, warm, 0, 1, 1, d.cfg.s6Pad)
		if err != nil {
			return err
		}
		healthy := int64(n - r.Stalled)
		if !f.waitFrames(ctx, healthy*warm, 20*time.Second) {
			return fmt.Errorf("warm-up: %d of %d frames", f.recv.Load(), healthy*warm)
		}
		f.minSeq.Store(w.LastSeq + 1)
		if _, err := p.writes(ctx, r.Events, d.cfg.s6Rate, 1, 1, d.cfg.s6Pad); err != nil {
			return err
		}
		f.waitFrames(ctx, healthy*int64(warm+r.Events), 15*time.Second)
		// Stalled readers resume: they read what was queued, then the close.
		close(f.resume)
		per := int64(warm + r.Events)
		// Wait until every stalled reader ended or got everything, or made
		// no progress for a second (raw melody neither closes nor resends).
		deadline := time.Now().Add(12 * time.Second)
		last, lastChange := f.recv.Load(), time.Now()
		for time.Now().Before(deadline) && !f.stalledDone(stalled, per) && time.Since(lastChange) < time.Second {
			time.Sleep(10 * time.Millisecond)
			if now := f.recv.Load(); now != last {
				last, lastChange = now, time.Now()
			}
		}
		st, err := p.stats(ctx)
		if err != nil {
			return err
		}
		r.ServerDrop = st.Drops
		f.closeAll()
		notStalled := func(i int) bool { return !group(i) }
		r.HealthyT = f.count(per, notStalled)
		r.StalledT = f.count(per, group)
		r.Healthy = summarize(f.latencies(notStalled))
		r.WindowP99, r.WindowP99s = f.windowP99(notStalled, max(int64(d.cfg.s6Rate), 1))
		d.logf("  %s: healthy p99 %.2f ms; stalled: %d closed 1013, %d silent drops", name, r.Healthy.P99, r.StalledT.Closed1013, r.StalledT.SilentDrops+r.HealthyT.SilentDrops)
		return nil
	})
	return r, err
}

// ---- S7 ------------------------------------------------------------------

// s7Run is one database and writer count: every round's figure of every
// variant, rounds in the order they ran.
type s7Run struct {
	DB          string               `json:"db"`
	Writers     int                  `json:"writers"`
	Subscribers int                  `json:"subscribers"`
	PerS        map[string][]float64 `json:"updates_per_s"`      // by variant
	CPU         map[string][]float64 `json:"cpu_us_per_update"`  // server CPU, by variant
	Closed      []int                `json:"subscribers_closed"` // per subscribed round: subscribers the server closed
	Deliveries  []float64            `json:"deliveries_per_s"`   // per subscribed round: frames the subscribers read per second of writes
	Reasons     map[string]int       `json:"close_reasons"`      // all subscribed rounds: the server's closes by code and reason
}

// s7Limit bounds S7: its rounds twice over, 2 s per subscribed round to
// connect and disconnect the subscribers, and a minute for starting
// PostgreSQL.
func (d *driver) s7Limit() time.Duration {
	cases := len(d.cfg.s7DBs) * len(d.cfg.s7Writers)
	rounds := time.Duration(cases*(d.cfg.s7Rounds*len(s7Variants)*int(d.cfg.s7Seconds*1000)+len(s7Variants)*s7WarmMs)) * time.Millisecond
	return scenarioLimit + 2*rounds + time.Duration(cases*d.cfg.s7Rounds)*2*time.Second
}

// s7WarmMs is the length of the unmeasured round of every variant that
// opens the pool's connections before the rounds of a writer count.
const s7WarmMs = 200

// s7Target is the floor for capture on, no subscriber, relative to
// plain GORM (0: none).
func s7Target(db string, writers int) float64 {
	switch {
	case db == "postgres" && writers == 16:
		return 0.85
	case db == "postgres" && writers == 1, db == "sqlite" && writers == 1:
		return 0.8
	}
	return 0
}

// s7OutboxTarget is the floor for capture with the outbox, no
// subscriber, relative to plain GORM (0: none).
func s7OutboxTarget(db string, writers int) float64 {
	if db == "postgres" && writers == 16 {
		return 0.6
	}
	return 0
}

func (d *driver) s7(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "what the library costs the application's writers: GORM updates/s with channelsapi registered vs plain GORM, interleaved rounds", Details: map[string]any{}}
	n := d.fitConns("S7", d.cfg.s7Subs)
	var runs []*s7Run
	var errs []error
	for _, db := range d.cfg.s7DBs {
		r, note, err := d.s7DB(ctx, db, n)
		runs = append(runs, r...)
		if note != "" {
			res.Notes = append(res.Notes, note)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", db, err))
		}
	}
	for _, r := range runs {
		name := map[string]string{"postgres": "PostgreSQL", "sqlite": "SQLite"}[r.DB]
		c := fmt.Sprintf("%s, %d writers", name, r.Writers)
		if r.Writers == 1 {
			c = name + ", 1 writer"
		}
		plain := median(r.PerS[variantPlain])
		perRound := func(v string) float64 {
			var q []float64
			for i, base := range r.PerS[variantPlain] {
				q = append(q, ratio(r.PerS[v][i], base))
			}
			return median(q)
		}
		capture, subscribed, outbox := median(r.PerS[variantCapture]), median(r.PerS[variantSubscribed]), median(r.PerS[variantOutbox])
		capRatio, subRatio, outboxRatio := perRound(variantCapture), perRound(variantSubscribed), perRound(variantOutbox)
		capRow := row{Case: c, Metric: "updates/s, capture on, no subscriber", Value: capture, Baseline: plain, BaselineName: "plain GORM", Ratio: capRatio, Status: "info"}
		if t := s7Target(r.DB, r.Writers); t > 0 {
			capRow.Target, capRow.Status = fmt.Sprintf(">= %.2gx", t), status(capRatio >= t)
		}
		outboxRow := row{Case: c, Metric: "updates/s, capture on with the outbox, no subscriber", Value: outbox, Baseline: plain, BaselineName: "plain GORM", Ratio: outboxRatio, Status: "info"}
		if t := s7OutboxTarget(r.DB, r.Writers); t > 0 {
			outboxRow.Target, outboxRow.Status = fmt.Sprintf(">= %.2gx", t), status(outboxRatio >= t)
		}
		cpuPlain, cpuCapture, cpuOutbox := median(r.CPU[variantPlain]), median(r.CPU[variantCapture]), median(r.CPU[variantOutbox])
		res.Rows = append(res.Rows, capRow, outboxRow,
			row{Case: c, Metric: fmt.Sprintf("updates/s, %d subscribers", r.Subscribers), Value: subscribed, Baseline: plain, BaselineName: "plain GORM", Ratio: subRatio, Status: "info"},
			row{Case: c, Metric: "server CPU per update, capture on", Unit: "µs", Value: cpuCapture, Baseline: cpuPlain, BaselineName: "plain GORM", Ratio: ratio(cpuCapture, cpuPlain), Status: "info"},
			row{Case: c, Metric: "server CPU per update, outbox", Unit: "µs", Value: cpuOutbox, Baseline: cpuPlain, BaselineName: "plain GORM", Ratio: ratio(cpuOutbox, cpuPlain), Status: "info"},
			row{Case: c, Metric: "deliveries/s to the subscribers", Value: median(r.Deliveries), Status: "info"},
			row{Case: c, Metric: "subscribers closed per round", Value: median(toFloats(r.Closed)), Baseline: float64(r.Subscribers), BaselineName: "connected", Status: "info"},
		)
		if len(r.Reasons) > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("%s: subscribers closed in the subscribed rounds %v (of %d each), by close code and reason: %v", c, r.Closed, r.Subscribers, r.Reasons))
		}
	}
	res.Notes = append(res.Notes,
		fmt.Sprintf("each round runs plain GORM, capture on, %d subscribers and the outbox for %gs each, in an order rotating by round; %d rounds; updates/s are medians of the rounds, ratios the median of the rounds' own ratios", n, d.cfg.s7Seconds, d.cfg.s7Rounds),
		"one server process holds all four *gorm.DB on one *sql.DB pool (SQLite: one connection, WAL, synchronous=NORMAL, _txlock=immediate; PostgreSQL: one connection per writer); the subscribers connect before each subscribed round and disconnect after it (so what it queued for them does not run into the next round)",
	)
	res.Details["runs"] = runs
	return fail(res, errors.Join(errs...))
}

// s7DB runs every writer count on one database, on one server.
func (d *driver) s7DB(ctx context.Context, db string, n int) (runs []*s7Run, note string, err error) {
	cfg := serverConfig{mode: "writers", db: db, rows: slices.Max(d.cfg.s7Writers)}
	if db == "postgres" {
		pg, skip, err := d.startPostgres(ctx)
		if skip != "" {
			return nil, "PostgreSQL rows skipped: " + skip, nil
		}
		if err != nil {
			return nil, "", err
		}
		defer pg.stop()
		cfg.dsn, note = pg.dsn, "PostgreSQL: "+pg.desc
	}
	err = d.withServer(ctx, cfg, func(p *serverProc) error {
		for _, w := range d.cfg.s7Writers {
			r, err := d.s7Rounds(ctx, p, n, db, w)
			if err != nil {
				return fmt.Errorf("%d writers: %w", w, err)
			}
			runs = append(runs, r)
		}
		return nil
	})
	return runs, note, err
}

// s7Rounds measures w writers: a warm-up round of every variant, then
// s7Rounds rounds of every variant, rotating the order.
func (d *driver) s7Rounds(ctx context.Context, p *serverProc, n int, db string, w int) (*s7Run, error) {
	r := &s7Run{DB: db, Writers: w, Subscribers: n, PerS: map[string][]float64{}, CPU: map[string][]float64{}, Reasons: map[string]int{}}
	for _, v := range s7Variants {
		if _, err := p.updates(ctx, v, w, s7WarmMs*time.Millisecond); err != nil {
			return nil, fmt.Errorf("warm-up %s: %w", v, err)
		}
	}
	dur := time.Duration(d.cfg.s7Seconds * float64(time.Second))
	for round := range d.cfg.s7Rounds {
		for i := range s7Variants {
			v := s7Variants[(round+i)%len(s7Variants)]
			var (
				u   updatesReply
				err error
			)
			if v == variantSubscribed {
				err = d.s7Subscribed(ctx, p, n, w, dur, r, &u)
			} else {
				u, err = p.updates(ctx, v, w, dur)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v, err)
			}
			r.PerS[v] = append(r.PerS[v], u.PerS)
			r.CPU[v] = append(r.CPU[v], float64(u.CPUMicros)/float64(max(u.Updates, 1)))
			d.logf("  %s W=%d round %d %s: %.0f updates/s, %.1f µs CPU/update", db, w, round+1, v, u.PerS, r.CPU[v][len(r.CPU[v])-1])
		}
	}
	return r, nil
}

// s7Subscribed runs one round of the subscribed variant: n subscribers
// connect and subscribe, the writers run while they read, then they
// disconnect and the server lets them go, so that what the round queued for
// them is not delivered during the next round. It records the frames they
// read during the writes and those the server closed.
func (d *driver) s7Subscribed(ctx context.Context, p *serverProc, n, w int, dur time.Duration, r *s7Run, u *updatesReply) error {
	f, err := d.dial(ctx, p, n, dialOptions{stream: rowsTable, subscribe: func(int) int { return 0 }})
	if err != nil {
		return err
	}
	defer f.closeAll()
	if err := expectConns(ctx, p, n, n); err != nil {
		return err
	}
	if *u, err = p.updates(ctx, variantSubscribed, w, dur); err != nil {
		return err
	}
	r.Deliveries = append(r.Deliveries, float64(f.recv.Load())/u.Seconds)
	f.closeAll()
	closed := 0
	for _, c := range f.clients {
		if c.close != -1 { // -1: the driver's own close
			r.Reasons[strings.TrimSpace(strconv.Itoa(c.close)+" "+c.reason)]++
			closed++
		}
	}
	r.Closed = append(r.Closed, closed)
	return expectConns(ctx, p, 0, 0)
}

func toFloats(v []int) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}
