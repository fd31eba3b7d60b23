"""Run inside gdb (sourced after the extension) on a qemu-storage-daemon core or process.

Measures, in one gdb run, the cost of reading every chardev's socket fields and lock:
  * baseline: the same fields through typed gdb.Value accesses (what a gdb one-liner does);
  * ours: one read_memory per structure, decoded with struct (qemu_chardev.target.memory.View).
Prints one JSON line with both timings, their ratio and the read counts.
"""
import json
import time

import gdb

from qemu_chardev.readers import qom
from qemu_chardev.target.snapshot import Snapshot

FIELDS = ("ioc", "sioc", "listener", "state", "hup_source", "reconnect_timer", "connect_task",
          "is_listen", "telnet_source")
LOCK_FIELDS = ("__lock", "__owner", "__count", "__kind")
ROUNDS = int(gdb.parse_and_eval("$bench_rounds")) if gdb.convenience_variable("bench_rounds") \
    else 200


def via_values(addresses):
    sock_type = gdb.lookup_type("SocketChardev").pointer()
    out = []
    for address in addresses:
        value = gdb.Value(address).cast(sock_type).dereference()
        row = [int(value[f]) for f in FIELDS]
        data = value["parent"]["chr_write_lock"]["lock"]["__data"]
        row += [int(data[f]) for f in LOCK_FIELDS]
        out.append(row)
    return out


def via_views(addresses):
    snap = Snapshot()
    layout = qom.socket_layout()
    out = []
    for address in addresses:
        view = snap.mem.view(layout, address)
        row = [view[f] for f in FIELDS]
        row += [view["parent.chr_write_lock.lock.__data." + f] for f in LOCK_FIELDS]
        out.append(row)
    return out, snap.mem.reads


def main():
    snap = Snapshot()
    sockets = [a for _label, a in qom.chardevs_in_tree(snap)
               if "chardev-socket" in qom.type_ancestry(snap, a)]
    expected = via_values(sockets)
    got, reads = via_views(sockets)
    assert got == expected, "decoders disagree"
    timings = {}
    for name, fn in (("gdb_value", lambda: via_values(sockets)),
                     ("one_read_per_struct", lambda: via_views(sockets))):
        start = time.perf_counter()
        for _ in range(ROUNDS):
            fn()
        timings[name] = (time.perf_counter() - start) / ROUNDS / max(len(sockets), 1)
    print(json.dumps({
        "socket_chardevs": len(sockets), "rounds": ROUNDS,
        "fields_per_chardev": len(FIELDS) + len(LOCK_FIELDS),
        "us_per_chardev_gdb_value": round(timings["gdb_value"] * 1e6, 1),
        "us_per_chardev_ours": round(timings["one_read_per_struct"] * 1e6, 1),
        "speedup": round(timings["gdb_value"] / timings["one_read_per_struct"], 1),
        "memory_reads_per_chardev": reads / max(len(sockets), 1),
    }))


main()
