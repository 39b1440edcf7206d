// Package dataplane loads fsha's eBPF programs, attaches them to the public
// interfaces, pins their maps and gives the rest of fsha a typed API over
// them: VIPs and ports in, flows, events and counters out.
package dataplane

//go:generate go tool bpf2go -cc ${BPF2GO_CC} -strip ${BPF2GO_STRIP} -cflags "-O2 -g -Wall -Werror" -target bpfel -type flow_key -type flow -type flow_event -type vip_key -type vip_info -type counter -type direction -type flow_state -type flow_fin -type flow_event_type -type flow_close_reason -type vip_flags -type node_lease -type lease_mode -type vip_lease_state -type vip_lease -type vip_grant -type peer_flow -type node_mac -type node_mac_flags -type peer_mac_key -type peer_flags -type pin_format_version -type steer_mode fsha ../bpf/fsha.c -- -I../bpf -I..
