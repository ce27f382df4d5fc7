package main

import (
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// svgDoc is what the tests read back from an SVG: the root element, every
// text, and the series groups with their polylines' point counts, in order.
type svgDoc struct {
	root   string
	texts  []string
	series []svgSeries
}

type svgSeries struct {
	name   string
	points int
}

// parseSVG decodes b as XML to its end, failing the test on any error.
func parseSVG(t *testing.T, b []byte) svgDoc {
	t.Helper()
	var doc svgDoc
	dec := xml.NewDecoder(strings.NewReader(string(b)))
	inText := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if doc.root == "" {
				doc.root = e.Name.Local
			}
			inText = e.Name.Local == "text"
			attr := func(name string) string {
				for _, a := range e.Attr {
					if a.Name.Local == name {
						return a.Value
					}
				}
				return ""
			}
			switch e.Name.Local {
			case "g":
				if attr("class") == "series" {
					doc.series = append(doc.series, svgSeries{name: attr("data-name")})
				}
			case "polyline":
				if len(doc.series) == 0 {
					t.Fatalf("polyline outside a series group")
				}
				doc.series[len(doc.series)-1].points = len(strings.Fields(attr("points")))
			}
		case xml.CharData:
			if inText {
				doc.texts = append(doc.texts, string(e))
			}
		case xml.EndElement:
			inText = false
		}
	}
	return doc
}

func TestS9SVG(t *testing.T) {
	var points []s9Point
	for _, m := range []string{"lib", "raw", modeCentrifuge} {
		for i, n := range []int{1000, 5000, 10000, 20000} {
			points = append(points, s9Point{Mode: m, N: n, DeliveriesPerS: float64(900000 - 10000*i), CPUPerDelivery: 1.5 + float64(i)/10, Complete: true})
		}
	}
	path := filepath.Join(t.TempDir(), "s9.svg")
	if err := writeS9SVG(path, points); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := parseSVG(t, b)
	if doc.root != "svg" {
		t.Fatalf("root element %q, want svg", doc.root)
	}
	want := []svgSeries{{"channelsapi", 4}, {"melody", 4}, {"centrifuge", 4}}
	if !slices.Equal(doc.series, append(slices.Clone(want), want...)) {
		t.Fatalf("series %v, want %v in each of two charts", doc.series, want)
	}
	for _, text := range []string{"channelsapi", "melody", "centrifuge", "Deliveries per second", "Server CPU per delivery",
		"subscribers (N)", "deliveries/s", "CPU µs per delivery", "1000", "5000", "10k", "20k"} {
		if !slices.Contains(doc.texts, text) {
			t.Errorf("no text %q in %q", text, doc.texts)
		}
	}
}

// A server without figures (its peer was not built, or its bursts never
// completed) is left out of the charts and their legend.
func TestS9SVGLeavesOutEmptySeries(t *testing.T) {
	points := []s9Point{
		{Mode: "lib", N: 200, DeliveriesPerS: 5e5, CPUPerDelivery: 2},
		{Mode: "raw", N: 200, DeliveriesPerS: 3e5, CPUPerDelivery: 3},
		{Mode: modeCentrifuge, N: 200},
	}
	var b strings.Builder
	if err := writeSVG(&b, `S9 <&> "N"`, s9Charts(points)); err != nil {
		t.Fatal(err)
	}
	doc := parseSVG(t, []byte(b.String()))
	want := []svgSeries{{"channelsapi", 1}, {"melody", 1}, {"channelsapi", 1}, {"melody", 1}}
	if !slices.Equal(doc.series, want) {
		t.Fatalf("series %v, want %v", doc.series, want)
	}
	if !slices.Contains(doc.texts, `S9 <&> "N"`) {
		t.Errorf("title not escaped and read back: %q", doc.texts)
	}
	if slices.Contains(doc.texts, "centrifuge") {
		t.Errorf("the legend names centrifuge, which has no figure")
	}
}

func TestNiceStep(t *testing.T) {
	for _, c := range []struct{ in, want float64 }{
		{0, 1}, {-3, 1}, {0.7, 1}, {1, 1}, {1.2, 2}, {3, 5}, {7, 10}, {180000, 200000}, {0.031, 0.05},
	} {
		if got := niceStep(c.in); got < c.want*(1-1e-9) || got > c.want*(1+1e-9) {
			t.Errorf("niceStep(%g) = %g, want %g", c.in, got, c.want)
		}
	}
}
