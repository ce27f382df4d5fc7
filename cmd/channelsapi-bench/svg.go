package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// chartSeries is one line of a chart: Y over X, points in X order.
type chartSeries struct {
	Name string
	X, Y []float64
}

// lineChart is a small line chart with labelled axes; its y axis starts at
// 0, its x axis too, with a tick at every X of its series.
type lineChart struct {
	Title, XLabel, YLabel string
	Series                []chartSeries
}

// seriesColors colour the series of every chart in order.
var seriesColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"}

// Geometry of writeSVG, in SVG user units.
const (
	svgChartW   = 440.0
	svgChartH   = 300.0
	svgGap      = 30.0
	svgTop      = 64.0 // below the title and the legend
	svgMarginL  = 70.0 // inside a chart: room for the y tick labels and label
	svgMarginR  = 16.0
	svgMarginT  = 28.0 // the chart's title
	svgMarginB  = 46.0 // the x tick labels and label
	svgFontSize = 12
)

// writeSVG writes charts side by side as one SVG document headed by title
// and a legend of the first chart's series (every chart is expected to
// have the same series in the same order).
func writeSVG(w io.Writer, title string, charts []lineChart) error {
	var b bytes.Buffer
	width := svgGap + float64(len(charts))*(svgChartW+svgGap)
	height := svgTop + svgChartH + 10
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="%d">`+"\n",
		width, height, width, height, svgFontSize)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", svgGap, esc(title))
	if len(charts) > 0 {
		x := svgGap
		for i, s := range charts[0].Series {
			fmt.Fprintf(&b, `<rect x="%.0f" y="36" width="14" height="4" fill="%s"/><text x="%.0f" y="42">%s</text>`+"\n", x, color(i), x+18, esc(s.Name))
			x += 30 + 7*float64(len(s.Name))
		}
	}
	for i, c := range charts {
		c.write(&b, svgGap+float64(i)*(svgChartW+svgGap), svgTop)
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

func color(i int) string { return seriesColors[i%len(seriesColors)] }

// write draws c with its top-left corner at (x0, y0).
func (c lineChart) write(b *bytes.Buffer, x0, y0 float64) {
	left, top := x0+svgMarginL, y0+svgMarginT
	w, h := svgChartW-svgMarginL-svgMarginR, svgChartH-svgMarginT-svgMarginB
	bottom := top + h

	var xs []float64
	maxX, maxY := 0.0, 0.0
	for _, s := range c.Series {
		for i, x := range s.X {
			xs = append(xs, x)
			maxX, maxY = max(maxX, x), max(maxY, s.Y[i])
		}
	}
	slices.Sort(xs)
	xs = slices.Compact(xs)
	if maxX == 0 {
		maxX = 1
	}
	step := niceStep(maxY / 5)
	topY := step * math.Max(1, math.Ceil(maxY/step))
	px := func(x float64) float64 { return left + w*x/maxX }
	py := func(y float64) float64 { return bottom - h*y/topY }

	fmt.Fprintf(b, `<g class="chart">`+"\n")
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold">%s</text>`+"\n", left+w/2, y0+16, esc(c.Title))
	// Grid and y ticks.
	for y := 0.0; y <= topY*(1+1e-9); y += step {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, left, py(y), left+w, py(y))
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py(y)+4, esc(fmtNum(y)))
	}
	// x ticks at the data's x.
	for _, x := range xs {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`, px(x), bottom, px(x), bottom+4)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(x), bottom+17, esc(fmtNum(x)))
	}
	// Axes and their labels.
	fmt.Fprintf(b, `<path d="M%.1f %.1fV%.1fH%.1f" fill="none" stroke="#333"/>`+"\n", left, top, bottom, left+w)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", left+w/2, bottom+36, esc(c.XLabel))
	fmt.Fprintf(b, `<text transform="translate(%.1f %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", x0+14, top+h/2, esc(c.YLabel))
	for i, s := range c.Series {
		if len(s.X) == 0 {
			continue
		}
		var pts []string
		for j, x := range s.X {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(x), py(s.Y[j])))
		}
		fmt.Fprintf(b, `<g class="series" data-name="%s"><title>%s</title>`, esc(s.Name), esc(s.Name))
		fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`, strings.Join(pts, " "), color(i))
		for j, x := range s.X {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, px(x), py(s.Y[j]), color(i))
		}
		b.WriteString("</g>\n")
	}
	b.WriteString("</g>\n")
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten (1 for v <= 0).
func niceStep(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// esc escapes s for XML text and attribute values.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
