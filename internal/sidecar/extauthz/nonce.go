package extauthz

import (
	"sync"
	"time"
)

// nonceResult is what nonceCache.add found.
type nonceResult int

const (
	nonceFresh    nonceResult = iota // not seen; now remembered
	nonceReplayed                    // seen and not yet expired
	nonceFull                        // not seen, but no room to remember it
)

func (r nonceResult) String() string {
	switch r {
	case nonceFresh:
		return "fresh"
	case nonceReplayed:
		return "replayed"
	case nonceFull:
		return "full"
	}
	return "unknown"
}

// nonceCache remembers request nonces until their timestamp leaves the skew
// window, for the verify routes that require them. It holds at most max
// entries: when full of live ones it refuses new nonces (fail closed)
// rather than forget one that could then be replayed. Safe for concurrent
// use.
type nonceCache struct {
	mu        sync.Mutex
	max       int
	seen      map[string]time.Time // keyset + "\x00" + nonce -> forget after
	lastSweep time.Time
}

// nonceSweepEvery is how often add drops expired entries when not full.
const nonceSweepEvery = time.Minute

func newNonceCache(max int) *nonceCache {
	return &nonceCache{max: max, seen: map[string]time.Time{}}
}

// add records nonce for keyset until expires, unless it is already there.
func (c *nonceCache) add(keyset, nonce string, expires, now time.Time) nonceResult {
	key := keyset + "\x00" + nonce
	c.mu.Lock()
	defer c.mu.Unlock()
	if exp, ok := c.seen[key]; ok && now.Before(exp) {
		return nonceReplayed
	}
	if len(c.seen) >= c.max || now.Sub(c.lastSweep) >= nonceSweepEvery {
		for k, exp := range c.seen {
			if !now.Before(exp) {
				delete(c.seen, k)
			}
		}
		c.lastSweep = now
	}
	if len(c.seen) >= c.max {
		return nonceFull
	}
	c.seen[key] = expires
	return nonceFresh
}
