package xds

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/xds/usagev1"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// UsageSink keeps the key usage records sidecars report. id is who
// reported, as authenticated (the zero Identity but for Pod on an open
// server); every record's keyset is one id may use, or "".
type UsageSink interface {
	Report(ctx context.Context, id Identity, recs []*usagev1.Record)
}

// Limits on one usage report, so an authenticated but misbehaving pod
// cannot make the controller hold or log without bound.
const (
	MaxUsageRecords = 4096
	maxUsageReasons = 16
)

// usageOps and usageReasons are the names a record may use (the wire
// contract in usagev1); anything else is counted as "other".
var (
	usageOps     = setOf(usagev1.Ops)
	usageReasons = setOf(usagev1.Reasons)
)

func setOf(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// SetUsage makes the Server accept usage reports for sink, on the same
// port and under the same authentication as keysets. Without a sink the
// KeyUsage service answers Unimplemented.
func (s *Server) SetUsage(sink UsageSink) {
	s.mu.Lock()
	s.usage = sink
	s.mu.Unlock()
}

func (s *Server) usageSink() UsageSink {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usage
}

// usageService is the KeyUsage service as registered.
type usageService struct {
	usagev1.UnimplementedKeyUsageServer
	s *Server
}

// Report authenticates the pod like an SDS stream, checks the node ID is
// its own, keeps each record under its keyset only if the pod may use that
// keyset (otherwise under ""), normalises operation and reason names, and
// hands the records to the sink.
func (u usageService) Report(ctx context.Context, req *usagev1.ReportRequest) (*usagev1.ReportResponse, error) {
	s := u.s
	sink := s.usageSink()
	if sink == nil {
		return nil, status.Error(codes.Unimplemented, "xds: this controller does not take usage reports")
	}
	if !s.Active() {
		return nil, errNotLeader
	}
	if len(req.GetRecords()) > MaxUsageRecords {
		return nil, status.Errorf(codes.InvalidArgument, "xds: %d usage records in one report; at most %d", len(req.GetRecords()), MaxUsageRecords)
	}
	var id Identity
	if s.access != nil {
		var err error
		if id, err = s.access.Authenticate(ctx); err != nil {
			s.log.Warn("usage report refused: not authenticated", "err", err)
			return nil, status.Errorf(codes.Unauthenticated, "xds: %v", err)
		}
		if req.GetNodeId() != id.NodeID() {
			return nil, status.Errorf(codes.PermissionDenied, "xds: node id %q is not the authenticated pod %s", clip(req.GetNodeId()), id.NodeID())
		}
	} else {
		id.Namespace, id.Pod, _ = wire.SplitNodeID(clip(req.GetNodeId()))
	}
	allowed := map[string]bool{}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	recs := make([]*usagev1.Record, 0, len(req.GetRecords()))
	var accepted uint32
	for _, r := range req.GetRecords() {
		r = normalise(r)
		if r.Keyset != "" {
			ok, seen := allowed[r.Keyset]
			if !seen {
				ok = s.access == nil || s.access.Authorize(actx, id, r.Keyset) == nil
				allowed[r.Keyset] = ok
			}
			if !ok {
				r.Keyset, r.Version = "", 0
			}
		}
		if r.Keyset != "" {
			accepted++
		}
		recs = append(recs, r)
	}
	if len(recs) > 0 {
		sink.Report(ctx, id, recs)
	}
	return &usagev1.ReportResponse{Accepted: accepted}, nil
}

// normalise returns a copy of r with bounded, known names.
func normalise(r *usagev1.Record) *usagev1.Record {
	out := &usagev1.Record{FromUnixMs: r.GetFromUnixMs(), ToUnixMs: r.GetToUnixMs(), PeerUid: r.GetPeerUid(), Keyset: r.GetKeyset(),
		Version: r.GetVersion(), Op: r.GetOp(), Ok: r.GetOk()}
	if !usageOps[out.Op] {
		out.Op = "other"
	}
	if out.Keyset != "" && envelope.ValidateName(out.Keyset) != nil {
		out.Keyset, out.Version = "", 0 // not a keyset name the pod could have been served
	}
	for reason, n := range r.GetFailed() {
		if !usageReasons[reason] {
			reason = "other"
		}
		if out.Failed == nil {
			out.Failed = map[string]uint64{}
		}
		if len(out.Failed) < maxUsageReasons || out.Failed[reason] > 0 {
			out.Failed[reason] += n
		}
	}
	return out
}

// registerUsage adds the KeyUsage service to g.
func (s *Server) registerUsage(g *grpc.Server) {
	usagev1.RegisterKeyUsageServer(g, usageService{s: s})
}
