package clusterstatus

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"
)

// JSON writes the report for scripts: indented, one document.
func JSON(w io.Writer, rep *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// Table writes the report as kubectl prints a list: aligned columns,
// "-" for none and "?" for not known; the NAMESPACE column only when the
// report spans namespaces. now dates the NEXT column ("in 29d").
func Table(w io.Writer, rep *Report, withNamespace bool, now time.Time) error {
	tw := tabwriter.NewWriter(w, 10, 4, 3, ' ', 0)
	if withNamespace {
		fmt.Fprint(tw, "NAMESPACE\t")
	}
	fmt.Fprintln(tw, "NAME\tPRIMARY\tPENDING\tACKED\tNEXT\tBLOCKED")
	for _, r := range rep.Keysets {
		if withNamespace {
			fmt.Fprintf(tw, "%s\t", r.Namespace)
		}
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t?\t?\t?\t?\tsecret %s: %s\n", r.Name, r.Secret, r.Error)
			continue
		}
		pending, acked := "-", "-"
		if p := r.Pending; p != nil {
			pending, acked = fmt.Sprintf("v%d", p.Version), "?"
			if p.Acked != nil && p.Readers != nil {
				acked = fmt.Sprintf("%d/%d", *p.Acked, *p.Readers)
			}
		}
		next := r.Next.Text
		if r.Next.At != nil && !r.Next.Due {
			next += " (in " + duration.HumanDuration(r.Next.At.Sub(now)) + ")"
		}
		blocked := r.Blocked
		if blocked == "" {
			blocked = "-"
		}
		fmt.Fprintf(tw, "%s\tv%d\t%s\t%s\t%s\t%s\n", r.Name, r.Primary, pending, acked, next, blocked)
	}
	return tw.Flush()
}
