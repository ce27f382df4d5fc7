package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"time"
)

// s9Point is one server at one N: S1's figures, medians of the bursts.
type s9Point struct {
	Mode           string  `json:"mode"`
	N              int     `json:"n"`
	DeliveriesPerS float64 `json:"deliveries_per_s"`
	CPUPerDelivery float64 `json:"cpu_us_per_delivery"`
	Complete       bool    `json:"complete"`
	SilentDrops    int64   `json:"silent_drops"`
}

// seriesName is what the report and the charts call a server mode.
var seriesName = map[string]string{"lib": "channelsapi", "raw": "melody", modeCentrifuge: "centrifuge"}

// s9Limit bounds S9: a minute, plus for every N and server 30 s
// (connecting, the warm-up) and every burst's timeout.
func (d *driver) s9Limit() time.Duration {
	limit := scenarioLimit
	for _, n := range d.cfg.s9N {
		perServer := 30*time.Second + time.Duration(d.cfg.s1Repeat)*burstTimeout(float64(n*d.cfg.s1Events))
		limit += 3 * perServer
	}
	return limit
}

func (d *driver) s9(ctx context.Context) scenarioResult {
	res := scenarioResult{Title: "how cost grows with N: S1's bursts at every N for channelsapi, raw melody and centrifuge", Details: map[string]any{}}
	modes := d.fanOutModes()
	var points []s9Point
	var err error
	for _, want := range d.cfg.s9N {
		// The servers run at once, as in S1, when their fleets fit in
		// RLIMIT_NOFILE together; otherwise one after another.
		n, groups := want, [][]string{modes}
		if d.noFile != 0 && uint64(len(modes)*want)+100 > d.noFile {
			n, groups = d.fitConns("S9", want), nil
			for _, m := range modes {
				groups = append(groups, []string{m})
			}
			res.Notes = append(res.Notes, fmt.Sprintf("N=%d: %d fleets do not fit in RLIMIT_NOFILE %d together: the servers ran one after another", n, len(modes), d.noFile))
		}
		byMode := map[string]*burstRun{}
		for _, g := range groups {
			var got map[string]*burstRun
			if got, err = d.bursts(ctx, n, g); err != nil {
				break
			}
			maps.Copy(byMode, got)
		}
		if err != nil {
			err = fmt.Errorf("with %d subscribers: %w", n, err)
			break
		}
		for _, m := range modes {
			r := byMode[m]
			if !r.Complete {
				res.Notes = append(res.Notes, fmt.Sprintf("N=%d: %s did not deliver every burst in time (%d bursts measured; %d deliveries missing)",
					n, seriesName[m], len(r.DeliveriesPerS), r.Tally.Missing))
			}
			points = append(points, s9Point{Mode: m, N: n, DeliveriesPerS: median(r.DeliveriesPerS), CPUPerDelivery: median(r.CPUPerDelivery),
				Complete: r.Complete, SilentDrops: r.Tally.SilentDrops})
		}
		res.Rows = append(res.Rows, s9Rows(n, byMode)...)
	}
	res.Notes = append(res.Notes, fmt.Sprintf("S1's method at every N: %d bursts of %d back-to-back updates per server (medians)", d.cfg.s1Repeat, d.cfg.s1Events))
	d.peerNote(&res)
	res.Details["points"] = points
	if d.cfg.s9SVG != "" && len(points) > 0 {
		if werr := writeS9SVG(d.cfg.s9SVG, points); werr != nil {
			res.Notes = append(res.Notes, "charts not written: "+werr.Error())
		} else {
			res.Notes = append(res.Notes, "charts written to "+d.cfg.s9SVG)
		}
	}
	return fail(res, err)
}

// s9Rows compares channelsapi with every other server at one N; S9 has no
// targets.
func s9Rows(n int, byMode map[string]*burstRun) []row {
	lib := byMode["lib"]
	dl, cl := median(lib.DeliveriesPerS), median(lib.CPUPerDelivery)
	c := fmt.Sprintf("N=%d", n)
	var rows []row
	for _, m := range []string{"raw", modeCentrifuge} {
		r := byMode[m]
		if r == nil {
			continue
		}
		db, cb := median(r.DeliveriesPerS), median(r.CPUPerDelivery)
		rows = append(rows,
			row{Case: c, Metric: "deliveries/s", Value: dl, Baseline: db, BaselineName: seriesName[m], Ratio: ratio(dl, db), Status: "info"},
			row{Case: c, Metric: "server CPU per delivery", Unit: "µs", Value: cl, Baseline: cb, BaselineName: seriesName[m], Ratio: ratio(cl, cb), Status: "info"},
		)
	}
	return rows
}

// s9Charts turns S9's points into its two charts, deliveries/s and CPU per
// delivery over N, one series per server (points without a figure left
// out).
func s9Charts(points []s9Point) []lineChart {
	rate := lineChart{Title: "Deliveries per second", XLabel: "subscribers (N)", YLabel: "deliveries/s"}
	cpu := lineChart{Title: "Server CPU per delivery", XLabel: "subscribers (N)", YLabel: "CPU µs per delivery"}
	for _, m := range []string{"lib", "raw", modeCentrifuge} {
		sr, sc := chartSeries{Name: seriesName[m]}, chartSeries{Name: seriesName[m]}
		for _, p := range points {
			if p.Mode != m || p.DeliveriesPerS == 0 {
				continue
			}
			sr.X, sr.Y = append(sr.X, float64(p.N)), append(sr.Y, p.DeliveriesPerS)
			sc.X, sc.Y = append(sc.X, float64(p.N)), append(sc.Y, p.CPUPerDelivery)
		}
		if len(sr.X) > 0 {
			rate.Series, cpu.Series = append(rate.Series, sr), append(cpu.Series, sc)
		}
	}
	return []lineChart{rate, cpu}
}

// writeS9SVG writes S9's charts to path.
func writeS9SVG(path string, points []s9Point) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = writeSVG(f, "channelsapi-bench S9: how cost grows with N (fan-out to every subscriber of one stream)", s9Charts(points))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
