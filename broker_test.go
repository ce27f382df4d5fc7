package channelsapi_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
)

// fakeBroker records how the API uses a Broker.
type fakeBroker struct {
	runErr error

	mu     sync.Mutex
	runs   int
	closes int
}

func (f *fakeBroker) Run(func(string, []byte), func([]string)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs++
	return f.runErr
}

func (*fakeBroker) Publish(string, []byte)             {}
func (*fakeBroker) Resync(string)                      {}
func (*fakeBroker) Watch(string, bool)                 {}
func (*fakeBroker) Ready(context.Context, string) bool { return true }

func (f *fakeBroker) Close(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return nil
}

func (f *fakeBroker) counts() (runs, closes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.runs, f.closes
}

// TestBrokerOwnedByTheAPI checks that the API owns the broker of WithBroker:
// Register runs it once and Shutdown closes it; a Register that fails, the
// broker's Run included, closes it.
func TestBrokerOwnedByTheAPI(t *testing.T) {
	t.Run("run by Register, closed by Shutdown", func(t *testing.T) {
		f := &fakeBroker{}
		api, err := channelsapi.Register(gin.New(), openDB(t, &TestModel{}), channelsapi.WithBroker(f))
		require.NoError(t, err)
		runs, closes := f.counts()
		assert.Equal(t, [2]int{1, 0}, [2]int{runs, closes})
		require.NoError(t, api.Shutdown(context.Background()))
		require.NoError(t, api.Shutdown(context.Background()))
		runs, closes = f.counts()
		assert.Equal(t, 1, runs)
		assert.GreaterOrEqual(t, closes, 1)
	})
	t.Run("Run fails", func(t *testing.T) {
		f := &fakeBroker{runErr: errors.New("no way")}
		_, err := channelsapi.Register(gin.New(), openDB(t, &TestModel{}), channelsapi.WithBroker(f))
		require.ErrorContains(t, err, "no way")
		_, closes := f.counts()
		assert.Equal(t, 1, closes)
	})
	t.Run("another option is invalid", func(t *testing.T) {
		f := &fakeBroker{}
		_, err := channelsapi.Register(gin.New(), openDB(t, &TestModel{}), channelsapi.WithBroker(f), channelsapi.WithQueueSize(-1))
		require.Error(t, err)
		runs, closes := f.counts()
		assert.Equal(t, [2]int{0, 1}, [2]int{runs, closes})
	})
}
