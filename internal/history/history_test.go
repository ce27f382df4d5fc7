package history

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRingAgainstModel appends and reads at random against a plain slice
// of everything appended: a read returns exactly the entries after its
// offset when the ring still holds them all, and reports false otherwise.
func TestRingAgainstModel(t *testing.T) {
	for _, size := range []int{0, 1, 3, 64, 100, 1000} {
		rng := rand.New(rand.NewPCG(uint64(size), 7))
		r := New[int](size, 0, nil)
		var all []int // all[o-1] is the entry at offset o
		for range 5000 {
			if rng.IntN(3) > 0 {
				v := rng.Int()
				all = append(all, v)
				require.EqualValues(t, len(all), r.Append(v))
				continue
			}
			last := uint64(len(all))
			after := uint64(rng.IntN(len(all) + 3))
			vs, got, ok := r.Since(after)
			require.Equal(t, last, got)
			held := uint64(min(size, len(all)))
			wantOK := after <= last && after+held >= last
			require.Equal(t, wantOK, ok, "size %d, after %d, last %d", size, after, last)
			if ok {
				require.Equal(t, len(all[after:]), len(vs))
				for i, v := range vs {
					require.Equal(t, all[int(after)+i], v)
				}
			} else {
				require.Empty(t, vs)
			}
		}
	}
}

// TestRingAge drops entries older than the ttl: a read that reaches back to
// one of them reports false, one after them still succeeds.
func TestRingAge(t *testing.T) {
	now := time.Unix(1000, 0)
	r := New[string](10, time.Minute, func() time.Time { return now })
	r.Append("a")
	now = now.Add(30 * time.Second)
	r.Append("b")
	now = now.Add(45 * time.Second) // "a" is 75 s old, "b" 45 s
	_, _, ok := r.Since(0)
	assert.False(t, ok, "the entry at offset 1 expired")
	vs, last, ok := r.Since(1)
	assert.True(t, ok)
	assert.Equal(t, []string{"b"}, vs)
	assert.EqualValues(t, 2, last)
	now = now.Add(time.Minute)
	_, _, ok = r.Since(1)
	assert.False(t, ok, "every entry expired")
	vs, _, ok = r.Since(2)
	assert.True(t, ok, "a reader at the last offset missed nothing")
	assert.Empty(t, vs)
	assert.EqualValues(t, 3, r.Append("c"), "offsets go on after expiry")
}
