package channelsapi_test

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// envPostgres names the environment variable holding the DSN of a
// PostgreSQL server to run the tests against, for example
// postgres://postgres@127.0.0.1:5440/postgres?sslmode=disable. Unset, the
// tests use SQLite.
const envPostgres = "CHANNELSAPI_TEST_POSTGRES"

// postgresDSN returns the DSN of envPostgres, or "" when it is not set.
func postgresDSN() string { return os.Getenv(envPostgres) }

// postgresSchema creates a uniquely named schema on the server of dsn,
// drops it (with everything in it) when the test ends, and returns a DSN
// whose connections work in that schema (search_path). Tests sharing one
// server so never see each other's tables.
func postgresSchema(tb testing.TB, dsn string) string {
	tb.Helper()
	admin, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(tb, err)
	sqlAdmin, err := admin.DB()
	require.NoError(tb, err)
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := "channelsapi_test_" + hex.EncodeToString(b)
	require.NoError(tb, admin.Exec("CREATE SCHEMA "+name).Error)
	tb.Cleanup(func() {
		if err := admin.Exec("DROP SCHEMA " + name + " CASCADE").Error; err != nil {
			tb.Errorf("drop schema %s: %v", name, err)
		}
		_ = sqlAdmin.Close()
	})
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		require.NoError(tb, err)
		q := u.Query()
		q.Set("search_path", name)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + name // key=value form
}

// openPostgres opens a fresh schema on the server of dsn and migrates models
// into it.
func openPostgres(tb testing.TB, dsn string, models ...any) *gorm.DB {
	tb.Helper()
	db, err := gorm.Open(postgres.Open(postgresSchema(tb, dsn)), &gorm.Config{Logger: logger.Discard})
	require.NoError(tb, err)
	sqlDB, err := db.DB()
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = sqlDB.Close() })
	require.NoError(tb, db.AutoMigrate(models...))
	return db
}
