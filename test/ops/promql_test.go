package ops_test

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// metricNames returns the metric names a PromQL expression selects, sorted
// and without repeats. It is a careful extraction rather than the
// Prometheus parser: importing github.com/prometheus/prometheus/promql/parser
// would raise a dozen of keyshift's own dependencies (prometheus/common,
// google.golang.org/api, go-openapi, otelhttp, ...). Every expression it
// reads is also parsed by the real parser, promtool's (see
// checkExprSyntax), so it only needs to be right on valid PromQL.
//
// Grafana's variables ($__rate_interval, $var, ${var}) are allowed. A
// selector written {__name__="..."} is refused: name metrics outside the
// braces so they can be checked.
func metricNames(expr string) ([]string, error) {
	if strings.Contains(expr, "__name__") {
		return nil, fmt.Errorf("%q selects by __name__: write the metric name before the braces", expr)
	}
	s := grafanaVars(expr)
	for _, re := range strip {
		s = re.ReplaceAllString(s, " ")
	}
	s = grouping.ReplaceAllString(s, " $1 ")
	var names []string
	for _, m := range token.FindAllStringSubmatchIndex(s, -1) {
		if m[2] < 0 { // a number
			continue
		}
		id := s[m[2]:m[3]]
		rest := strings.TrimLeft(s[m[1]:], " \t\r\n")
		if strings.HasPrefix(rest, "(") || keywords[strings.ToLower(id)] {
			continue // a function, an aggregation or a keyword
		}
		names = append(names, id)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// grafanaVars replaces Grafana's template variables with values PromQL
// accepts where they stand: a duration for the interval variables, a
// word elsewhere (they only stand in label values or ranges here).
func grafanaVars(expr string) string {
	s := regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}`).ReplaceAllString(expr, "5m")
	return regexp.MustCompile(`\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*`).ReplaceAllString(s, "x")
}

var (
	// strip removes, in order, what holds no metric name: string
	// literals, label matchers, range and subquery brackets, offset and @
	// modifiers, comments.
	strip = []*regexp.Regexp{
		regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'` + "|`[^`]*`"),
		regexp.MustCompile(`\{[^{}]*\}`),
		regexp.MustCompile(`\[[^\[\]]*\]`),
		regexp.MustCompile(`(?i)\boffset\s+-?[0-9a-z.]+`),
		regexp.MustCompile(`@\s*(?:start\s*\(\s*\)|end\s*\(\s*\)|[0-9.eE+-]+)`),
		regexp.MustCompile(`#[^\n]*`),
	}
	// grouping drops the label lists of by, without, on, ignoring,
	// group_left and group_right, keeping the keyword.
	grouping = regexp.MustCompile(`(?i)\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	// token is a number (group 1 unset) or an identifier (group 1).
	token = regexp.MustCompile(`0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[a-zA-Z]*|([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	// keywords are identifiers that are never metric names where they
	// stand without a following "(" (keyshift's metrics all start with
	// keyshift_, so none is one of them).
	keywords = map[string]bool{
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"bool": true, "and": true, "or": true, "unless": true, "atan2": true, "offset": true,
		"inf": true, "nan": true, "start": true, "end": true, "step": true,
		// aggregations, which may stand before "by (...)"
		"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
		"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
		"limitk": true, "limit_ratio": true,
	}
)
