package main

import (
	"context"
	"io"

	"github.com/fsha/fsha/dataplane"
	"go.uber.org/zap"
)

func (b *dataplaneBench) vethPPS(ctx context.Context, log *zap.Logger, out io.Writer, u *dataplane.Unpinned, pair *vethPair, n4 int) error {
	return nil
}
