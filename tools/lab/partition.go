package lab

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
)

// Partition splits the switch: the hosts of each group move to a bridge
// of their own in the switch namespace, the hosts named in no group stay
// together on the first one. Links stay up on every side: each side just
// stops hearing the other. Heal undoes it. (A second bridge rather than
// VLAN filtering, which not every kernel has.)
func (l *Lab) Partition(_ context.Context, groups ...[]*Host) error {
	sw := l.Switch
	l.partMu.Lock()
	defer l.partMu.Unlock()
	if len(l.side) > 0 {
		return errors.New("partition: already partitioned; Heal first")
	}
	l.beginFault("partition", "partition of the switch") // it hits every host
	for gi, g := range groups {
		name := "br-p" + strconv.Itoa(gi+1) // no role has a hyphen
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := sw.nl.LinkAdd(br); err != nil {
			return fmt.Errorf("partition: add bridge %s: %w", name, err)
		}
		l.bridges = append(l.bridges, name)
		if err := sw.nl.LinkSetUp(br); err != nil {
			return fmt.Errorf("partition: bridge %s up: %w", name, err)
		}
		for _, h := range g {
			if l.side == nil {
				l.side = map[string]string{}
			}
			if _, dup := l.side[h.Role]; dup {
				return fmt.Errorf("partition: %s in two groups", h.Role)
			}
			if err := l.setBridge(h.Role, name); err != nil {
				return fmt.Errorf("partition: %w", err)
			}
			l.side[h.Role] = name
		}
	}
	l.log.Info("partition", zap.Any("sides", l.side))
	return nil
}

func (l *Lab) setBridge(port, bridge string) error {
	nl := l.Switch.nl
	br, err := nl.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	lk, err := nl.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find port %s: %w", port, err)
	}
	if err := nl.LinkSetMaster(lk, br); err != nil {
		return fmt.Errorf("move %s to %s: %w", port, bridge, err)
	}
	return nil
}

// Heal ends a Partition: every port back on the first bridge.
func (l *Lab) Heal(context.Context) error {
	l.partMu.Lock()
	defer l.partMu.Unlock()
	for port := range l.side {
		if err := l.setBridge(port, bridgeName); err != nil {
			return fmt.Errorf("heal: %w", err)
		}
		delete(l.side, port)
	}
	for len(l.bridges) > 0 {
		name := l.bridges[len(l.bridges)-1]
		if lk, err := l.Switch.nl.LinkByName(name); err == nil {
			if err := l.Switch.nl.LinkDel(lk); err != nil {
				return fmt.Errorf("heal: delete bridge %s: %w", name, err)
			}
		}
		l.bridges = l.bridges[:len(l.bridges)-1]
	}
	l.endFault("partition")
	l.log.Info("partition healed")
	return nil
}
