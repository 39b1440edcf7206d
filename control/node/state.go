package node

// The state a node keeps across restarts and reboots (maintenance mode).

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"
)

// persisted is the state kept in StateFile.
type persisted struct {
	Disabled bool `json:"disabled"`
}

func (n *Node) loadState() {
	if n.cfg.StateFile == "" {
		return
	}
	file := n.cfg.StateFile
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) && n.cfg.LegacyStateFile != "" {
		file = n.cfg.LegacyStateFile
		b, err = os.ReadFile(file)
	}
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var p persisted
	if err == nil {
		err = json.Unmarshal(b, &p)
	}
	if err != nil {
		n.log.Warn("state file unreadable, starting enabled", zap.String("file", file), zap.Error(err))
		return
	}
	n.disabled = p.Disabled
	if p.Disabled {
		n.log.Info("node is disabled (maintenance); `fsha enable` to bring it back")
	}
	if file != n.cfg.StateFile {
		// kept where a reboot keeps it from now on
		if err := n.saveStateLocked(); err != nil {
			n.log.Warn("move the state to the state dir", zap.String("file", n.cfg.StateFile), zap.Error(err))
		}
	}
}

func (n *Node) saveStateLocked() error {
	if n.cfg.StateFile == "" {
		return nil
	}
	b, _ := json.Marshal(persisted{Disabled: n.disabled})
	if err := os.MkdirAll(filepath.Dir(n.cfg.StateFile), 0o700); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	tmp := n.cfg.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := os.Rename(tmp, n.cfg.StateFile); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}
