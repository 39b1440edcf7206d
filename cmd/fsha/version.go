package main

import (
	"runtime"
	"runtime/debug"
)

// version is set at link time by `make build` (-X main.version=...,
// from git describe); a plain `go build` falls back to what the Go
// toolchain recorded (the commit, when built from a checkout with VCS
// stamping on), else "devel".
var version string

// versionString is what `fsha --version` prints after "fsha version".
func versionString() string {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok {
			var rev, dirty string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					if s.Value == "true" {
						dirty = "-dirty"
					}
				}
			}
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if rev != "" {
				v = "devel-" + rev + dirty
			}
		}
	}
	return v + " (" + runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"
}
