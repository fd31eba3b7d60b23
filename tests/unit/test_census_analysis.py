"""Pure census analysis: validating GSource images, states, leaks, use-after-free, findings."""
import json
import struct

import pytest

from qemu_chardev.analysis import census as ca
from qemu_chardev.model import glib
from qemu_chardev.render import gsource as render_gsource

IDLE = 0x7F0000001300
TIMEOUT = 0x7F0000001380
CTX = 0x555500001000
MAPPED = [(0x555500000000, 0x555600000000), (0x7F0000000000, 0x7F0000100000)]
FINDING_KEYS = {"id", "severity", "title", "chardev", "lwp", "thread", "summary", "detail",
                "fix", "evidence"}


def is_mapped(address):
    return any(lo <= address < hi for lo, hi in MAPPED)


def image(callback_data=0, callback_funcs=0, funcs=IDLE, ref=1, context=CTX, priority=0,
          flags=1, source_id=1, poll_fds=0, prev=0, nxt=0, name=0, priv=0x555500002000):
    return struct.pack("<QQQIIQiIIIQQQQQ", callback_data, callback_funcs, funcs, ref, 0,
                       context, priority, flags, source_id, 0, poll_fds, prev, nxt, name, priv)


def rec(address=0x555500003000, **fields):
    return ca.decode(image(**fields), address)


def test_decode_reads_every_field_at_glib_offsets():
    r = ca.decode(image(callback_data=0x5555000040A0, callback_funcs=0x7F0000002000, ref=3,
                        priority=-100, flags=0x21, source_id=77, prev=0x555500005000,
                        nxt=0x555500006000, name=0x7F0000003000), 0x555500003000)
    assert (r.callback_data, r.callback_funcs, r.funcs) == (0x5555000040A0, 0x7F0000002000, IDLE)
    assert (r.ref_count, r.context, r.priority, r.flags, r.source_id) == (3, CTX, -100, 0x21, 77)
    assert (r.prev, r.next, r.name_ptr, r.priv) == \
        (0x555500005000, 0x555500006000, 0x7F0000003000, 0x555500002000)
    assert len(image()) == glib.GSOURCE_SIZE


@pytest.mark.parametrize("fields,address,reason", [
    ({}, 0x555500003004, "misaligned"),
    ({"ref": 1 << 24}, None, "ref_count out of range"),
    ({"flags": 0x81}, None, "unknown flag bits"),
    ({"priority": 1 << 21}, None, "priority out of range"),
    ({"priv": 0}, None, "priv is not a mapped pointer"),
    ({"priv": 0x123456}, None, "priv is not a mapped pointer"),
    ({"context": 0x555500001004}, None, "context is not a mapped pointer"),
    ({"callback_data": 0x999900000000}, None, "callback_data is not a mapped pointer"),
    ({"name": 0x1000}, None, "name is not a mapped pointer"),
    ({"context": 0, "source_id": 5}, None, "list links or id without a context"),
])
def test_rejection_reasons(fields, address, reason):
    r = ca.decode(image(**fields), address or 0x555500003000)
    assert ca.rejection(r, is_mapped) == reason


def test_freed_image_is_accepted_despite_malloc_metadata():
    # free() overwrote callback_data/callback_funcs with mangled list pointers; GLib NULLed
    # priv, name and the list links before freeing.
    r = rec(callback_data=0x0000564D3E54A112, callback_funcs=0x9C048157D08C30E3, ref=0,
            flags=0, priv=0)
    assert ca.rejection(r, is_mapped) is None
    assert glib.gsource_state(r.ref_count, r.flags, r.context, r.priority) == glib.FREED


@pytest.mark.parametrize("fields,state", [
    ({"flags": 0x1}, glib.ATTACHED),
    ({"flags": 0x21}, glib.ATTACHED),
    ({"flags": 0x1, "context": 0, "source_id": 0}, glib.UNATTACHED),
    ({"flags": 0x43}, glib.DISPATCHING),
    ({"flags": 0x2}, glib.DESTROYED_REFERENCED),  # destroyed inside its own callback
    ({"flags": 0x0}, glib.DESTROYED_REFERENCED),
    ({"flags": 0x0, "ref": 0, "priv": 0}, glib.FREED),
])
def test_state_of_record_fields(fields, state):
    r = rec(**fields)
    assert glib.gsource_state(r.ref_count, r.flags, r.context, r.priority) == state


def completion_leak(address, **overrides):
    fields = dict(ref=1, flags=0, priority=200, funcs=IDLE, name=0)
    fields.update(overrides)
    r = rec(address, **fields)
    r.name = "GIdleSource"
    return r


def test_classify_leak_only_without_owner_and_attributes_the_2019_signature():
    leaked = completion_leak(0x555500010000)
    owned = completion_leak(0x555500020000)
    two_refs = completion_leak(0x555500030000, ref=2)
    other = completion_leak(0x555500040000, funcs=TIMEOUT)
    attached = rec(0x555500050000)
    owners = [ca.Owner(0x555500020000, "chardev", "cli0.reconnect_timer", chardev="cli0")]
    records = [leaked, owned, two_refs, other, attached]
    ca.classify(records, owners, idle_funcs=IDLE)
    assert [r.state for r in records] == [glib.LEAKED, glib.DESTROYED_REFERENCED, glib.LEAKED,
                                          glib.LEAKED, glib.ATTACHED]
    assert leaked.origin == ca.QIO_TASK_ORIGIN
    assert two_refs.origin == "unknown" and other.origin == "unknown"
    assert owned.owners == ["cli0.reconnect_timer"]


def test_signature_needs_qio_tasks_in_the_target():
    leaked = completion_leak(0x555500010000)
    ca.classify([leaked], [], idle_funcs=IDLE, has_qio_task=False)
    assert leaked.state == glib.LEAKED and leaked.origin == "unknown"


def test_signature_rejects_callback_name_and_priority_mismatch():
    assert not ca.is_qio_task_completion_leak(completion_leak(1, priority=0), IDLE)
    named = completion_leak(2)
    named.name = "chardev-socket-reconnect-cli0"
    assert not ca.is_qio_task_completion_leak(named, IDLE)
    assert not ca.is_qio_task_completion_leak(completion_leak(3, callback_data=CTX,
                                                              callback_funcs=CTX), IDLE)
    assert not ca.is_qio_task_completion_leak(completion_leak(4, context=0), IDLE)
    assert ca.is_qio_task_completion_leak(completion_leak(5), IDLE)
    assert not ca.is_qio_task_completion_leak(completion_leak(6), None)


def test_use_after_free_pairs_only_checked_owners_of_freed_or_invalid_targets():
    freed = rec(0x555500010000, ref=0, flags=0, priv=0)
    reused = ca.SourceRecord(address=0x555500020000, found_via="owner", state=glib.INVALID)
    live = rec(0x555500030000)
    owners = [ca.Owner(freed.address, "chardev", "cli0.hup_source", chardev="cli0"),
              ca.Owner(freed.address, "frame", "tcp_chr_free:src (LWP 5)", lwp=5,
                       check_freed=False),
              ca.Owner(reused.address, "task", "QIOTask 0x1->thread->completion"),
              ca.Owner(live.address, "chardev", "cli0.reconnect_timer", chardev="cli0")]
    records = [freed, reused, live]
    ca.classify(records, owners, idle_funcs=IDLE)
    pairs = ca.use_after_free(records, owners)
    assert [(o.what, r.address) for o, r in pairs] == [
        ("cli0.hup_source", freed.address),
        ("QIOTask 0x1->thread->completion", reused.address)]
    found = [f.to_json() for f in ca.uaf_findings(pairs)]
    assert all(set(f) == FINDING_KEYS for f in found)
    assert found[0]["chardev"] == "cli0" and found[0]["severity"] == "error"
    assert found[0]["fix"] == ca.CHARDEV_LOCK_FIX        # a socket chardev field
    assert found[0]["evidence"] == {"owner": "cli0.hup_source", "owner_kind": "chardev",
                                    "source": f"0x{freed.address:x}", "state": "freed",
                                    "ref_count": 0}
    assert "reused" in found[1]["summary"] and found[1]["fix"] == ca.GENERIC_UAF_FIX


def test_leak_findings_split_by_origin_and_list_addresses():
    records = [completion_leak(0x555500010000 + 0x100 * i) for i in range(40)]
    stray = completion_leak(0x555600000000 - 0x1000, funcs=TIMEOUT)
    stray.funcs_name = "g_timeout_funcs"
    records.append(stray)
    ca.classify(records, [], idle_funcs=IDLE)
    found = [f.to_json() for f in ca.leak_findings(records, {CTX: "main loop GMainContext"})]
    assert [(f["id"], f["severity"]) for f in found] == [("gsource-leak", "error"),
                                                         ("gsource-leak", "warning")]
    assert all(set(f) == FINDING_KEYS for f in found)
    assert found[0]["summary"].startswith("40 leaked GSources")
    assert "main loop GMainContext" in found[0]["detail"]
    assert "0x555500010000" in found[0]["detail"] and "(8 more)" in found[0]["detail"]
    assert "qio_task_thread_worker()" in found[0]["fix"] and "QEMU 4.2" in found[0]["fix"]
    assert found[1]["summary"].startswith("1 destroyed GSource (g_timeout_funcs)")
    assert found[0]["evidence"]["count"] == 40 and len(found[0]["evidence"]["sources"]) == 40
    assert found[0]["evidence"]["contexts"] == [f"0x{CTX:x}"]


def test_no_findings_for_healthy_records():
    records = [rec(0x555500010000), rec(0x555500020000, ref=0, flags=0, priv=0)]
    ca.classify(records, [], idle_funcs=IDLE)
    census = ca.Census(records=records)
    assert census.findings() == []


def test_groups_and_counts():
    a = rec(0x555500010000)
    a.funcs_name, a.callback_name, a.name = "g_idle_funcs", "qio_task_thread_result", "GIdleSource"
    b = completion_leak(0x555500020000)
    b.funcs_name = "g_idle_funcs"
    c = completion_leak(0x555500030000)
    c.funcs_name = "g_idle_funcs"
    d = rec(0x555500040000, ref=0, flags=0, priv=0)
    d.funcs_name, d.name = "g_idle_funcs", "garbage"
    records = [a, b, c, d]
    ca.classify(records, [], idle_funcs=IDLE)
    groups = ca.groups(records)
    assert groups[0]["total"] == 2 and groups[0][glib.LEAKED] == 2
    freed_row = next(g for g in groups if g[glib.FREED])
    assert freed_row["name"] == "-"          # a freed record's name is not trusted
    counts = ca.counts(records)
    assert (counts[glib.ATTACHED], counts[glib.LEAKED], counts[glib.FREED]) == (1, 2, 1)


def test_census_json_and_text():
    leaked = completion_leak(0x555500010000)
    leaked.funcs_name = "g_idle_funcs"
    owners = [ca.Owner(0x555500099000, "chardev", "mon0.gsource", chardev="mon0")]
    census = ca.Census(records=[leaked], owners=owners, anchors={IDLE: "g_idle_funcs"},
                       source="core /tmp/x.core", bytes_scanned=1 << 20, seconds=0.01,
                       rejected={"misaligned": 2}, contexts={CTX: "main loop"})
    ca.classify(census.records, census.owners, idle_funcs=IDLE)
    obj = json.loads(json.dumps(census.to_json()))
    assert obj["leaked"] == ["0x555500010000"]
    assert obj["counts"]["leaked"] == 1 and obj["rejected"] == {"misaligned": 2}
    assert obj["sources"][0]["origin"] == ca.QIO_TASK_ORIGIN
    text = render_gsource.census_text(census)
    assert "Leaked (1):" in text and "error gsource-leak: 1 leaked GSource:" in text
    assert "2 candidate(s) rejected" in text
