package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
)

// report is the JSON document the command writes.
type report struct {
	Machine   machine          `json:"machine"`
	Quick     bool             `json:"quick"`
	Started   string           `json:"started"`
	Seconds   float64          `json:"seconds"`
	Scenarios []scenarioResult `json:"scenarios"`
}

type machine struct {
	CPUModel         string `json:"cpu_model"`
	NumCPU           int    `json:"num_cpu"`
	Kernel           string `json:"kernel"`
	GoVersion        string `json:"go_version"`
	ClientCPU        string `json:"client_cpu,omitempty"`
	ServerCPU        string `json:"server_cpu,omitempty"`
	ClientGOMAXPROCS int    `json:"client_gomaxprocs"`
	NoFile           uint64 `json:"rlimit_nofile"`
}

// scenarioResult is one scenario: its comparison rows and the raw numbers
// behind them.
type scenarioResult struct {
	ID      string         `json:"id"`
	Title   string         `json:"title"`
	Seconds float64        `json:"seconds"`
	Rows    []row          `json:"rows"`
	Details map[string]any `json:"details,omitempty"`
	Error   string         `json:"error,omitempty"`
	Notes   []string       `json:"notes,omitempty"`
}

// row compares one metric of channelsapi with its baseline, measured in the
// same run. Ratio is value/baseline (0 when there is no baseline).
type row struct {
	Case         string  `json:"case"`
	Metric       string  `json:"metric"`
	Unit         string  `json:"unit"`
	Value        float64 `json:"value"`
	Baseline     float64 `json:"baseline"`
	BaselineName string  `json:"baseline_name,omitempty"`
	Ratio        float64 `json:"ratio"`
	Target       string  `json:"target,omitempty"`
	Status       string  `json:"status"` // hit, miss or info
}

func ratio(v, base float64) float64 {
	if base == 0 {
		return 0
	}
	return v / base
}

func status(ok bool) string {
	if ok {
		return "hit"
	}
	return "miss"
}

func machineInfo() machine {
	m := machine{GoVersion: runtime.Version(), NumCPU: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			switch strings.TrimSpace(k) {
			case "model name":
				if ok && m.CPUModel == "" {
					m.CPUModel = strings.TrimSpace(v)
				}
			case "processor":
				n++
			}
		}
		if n > 0 {
			m.NumCPU = n
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// fmtNum prints a number with 3 significant digits and a thousands unit.
func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.3gk", v/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func printScenario(w io.Writer, r scenarioResult) {
	fmt.Fprintf(w, "\n%s  %s  (%.1fs)\n", strings.ToUpper(r.ID), r.Title, r.Seconds)
	if r.Error != "" {
		fmt.Fprintf(w, "  ERROR: %s\n", r.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  case\tmetric\tchannelsapi\tbaseline\tratio\ttarget\tresult")
	for _, x := range r.Rows {
		base, rat := "-", "-"
		if x.BaselineName != "" {
			base = fmtNum(x.Baseline) + " (" + x.BaselineName + ")"
		}
		if x.Ratio != 0 {
			rat = fmt.Sprintf("%.2fx", x.Ratio)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s %s\t%s\t%s\t%s\t%s\n", x.Case, x.Metric, fmtNum(x.Value), x.Unit, base, rat, x.Target, x.Status)
	}
	_ = tw.Flush()
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
}

func printSummary(w io.Writer, rep report) {
	var hit, miss int
	var missed []string
	for _, s := range rep.Scenarios {
		for _, x := range s.Rows {
			switch x.Status {
			case "hit":
				hit++
			case "miss":
				miss++
				missed = append(missed, fmt.Sprintf("%s %s %s", strings.ToUpper(s.ID), x.Case, x.Metric))
			}
		}
		if s.Error != "" {
			missed = append(missed, strings.ToUpper(s.ID)+" error")
		}
	}
	fmt.Fprintf(w, "\n%d targets hit, %d missed, %.1fs in all\n", hit, miss, rep.Seconds)
	for _, m := range missed {
		fmt.Fprintf(w, "  missed: %s\n", m)
	}
}

func writeJSON(path string, rep report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// percentile returns the p-th percentile (0..100) of sorted values.
func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// latencies summarizes samples in milliseconds.
type latencies struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(samples []int64) latencies {
	slices.Sort(samples)
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	return latencies{N: len(samples), P50: ms(percentile(samples, 50)), P99: ms(percentile(samples, 99)), Max: ms(percentile(samples, 100))}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
