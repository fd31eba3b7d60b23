"""The one vocabulary of conclusions: every id a report finding or a watch event can carry.

A finding of the ``qemu-chardev-report/1`` report (``qemu diagnose``, chardev-postmortem) and
an event of `qemu watch-disconnect` (its ``--json-log`` lines, ``--summary-json`` events) use
the same keys with the same meaning:

  id        the rule that concluded it: one of the ids below (the vocabulary)
  severity  error, warning or info (``model.diagnosis.SEVERITIES``), among the rule's own
  title     the rule's title, from here: what this kind of conclusion means
  summary   one line about this occurrence (which chardev, which thread)

A watch event numbers itself under ``seq`` (1, 2, ... in the order found).  An id is defined
here once; the rules that make findings and events name their ids by these constants, and
``Finding`` and ``WatchEvent`` refuse an id that is not here.  docs/report-schema.json and
docs/event-log-schema.json list the same ids (tests/unit/test_rule_vocabulary.py checks).
No gdb imports.
"""
from dataclasses import dataclass
from typing import Tuple

REPORT = "report"      # a finding of `qemu diagnose` / chardev-postmortem
WATCH = "watch"        # an event of `qemu watch-disconnect` / catch-disconnect-during-write

# --- report findings (analysis.findings, analysis.lifecycle, analysis.upstream, analysis.census)
IOC_NULL_DURING_WRITE = "ioc-null-during-write"
DEADLOCK = "deadlock"
WRITE_LOCK_HELD = "write-lock-held"
CHARDEV_USE_AFTER_FREE = "chardev-use-after-free"
CHANNEL_USE_AFTER_FREE = "channel-use-after-free"
QIOTASK_USE_AFTER_FREE = "qiotask-use-after-free"
GSOURCE_USE_AFTER_FREE = "gsource-use-after-free"
MUTEX_USE_AFTER_DESTROY = "mutex-use-after-destroy"
CHARDEV_CRASH = "chardev-crash"
KNOWN_UPSTREAM_BUG = "known-upstream-bug"
GSOURCE_LEAK = "gsource-leak"

# --- watch events (analysis.watch, live.disconnect) ------------------------------------------
DISCONNECT_DURING_WRITE = "disconnect-during-write"
DISCONNECT_WITHOUT_WRITE_LOCK = "disconnect-without-write-lock"
CALLBACK_ON_FINALIZED_CHARDEV = "callback-on-finalized-chardev"
FINALIZED_WITH_PENDING_TASK = "finalized-with-pending-task"
CRASH = "crash"


@dataclass(frozen=True)
class Rule:
    """One id of the vocabulary: who gives it, with which severities, and what it means."""
    id: str
    source: str                     # REPORT or WATCH
    severities: Tuple[str, ...]     # the severities it is given; the first is the usual one
    title: str

    @property
    def severity(self):
        return self.severities[0]


RULES = (
    Rule(IOC_NULL_DURING_WRITE, REPORT, ("error",),
         "a thread crashed or stopped writing to a socket chardev through a NULL channel"),
    Rule(DEADLOCK, REPORT, ("error",),
         "threads wait on each other's mutexes, or on one they hold"),
    Rule(WRITE_LOCK_HELD, REPORT, ("info", "warning"),
         "who holds a chardev's chr_write_lock and where (a warning outside the write path)"),
    Rule(CHARDEV_USE_AFTER_FREE, REPORT, ("error",),
         "the crashing thread used a finalized or freed Chardev"),
    Rule(CHANNEL_USE_AFTER_FREE, REPORT, ("error",),
         "the crashing thread used a finalized or freed QIOChannel"),
    Rule(QIOTASK_USE_AFTER_FREE, REPORT, ("error",),
         "the crashing thread used a freed QIOTask"),
    Rule(GSOURCE_USE_AFTER_FREE, REPORT, ("error",),
         "a GSource was used (or is pointed at) after it was freed"),
    Rule(MUTEX_USE_AFTER_DESTROY, REPORT, ("error",),
         "the crashing thread used a destroyed QemuMutex"),
    Rule(CHARDEV_CRASH, REPORT, ("error",),
         "a crash in chardev, channel, task, GSource-dispatch or lock code that no other "
         "rule explains"),
    Rule(KNOWN_UPSTREAM_BUG, REPORT, ("error",),
         "the crash matches every check of a catalogued upstream QEMU bug"),
    Rule(GSOURCE_LEAK, REPORT, ("error", "warning"),
         "destroyed GSources still referenced, that nothing known points at"),
    Rule(DISCONNECT_DURING_WRITE, WATCH, ("error",),
         "a socket chardev was torn down without chr_write_lock while another thread held "
         "it to write"),
    Rule(DISCONNECT_WITHOUT_WRITE_LOCK, WATCH, ("warning",),
         "a socket chardev was torn down without chr_write_lock (no write in flight this "
         "time)"),
    Rule(CALLBACK_ON_FINALIZED_CHARDEV, WATCH, ("error",),
         "a chardev callback is about to run on a finalized chardev"),
    Rule(FINALIZED_WITH_PENDING_TASK, WATCH, ("error",),
         "a socket chardev is finalized while its connect task is pending"),
    Rule(CRASH, WATCH, ("error",),
         "the watched process crashed"),
)
BY_ID = {rule.id: rule for rule in RULES}
IDS = tuple(BY_ID)
REPORT_IDS = tuple(r.id for r in RULES if r.source == REPORT)
WATCH_IDS = tuple(r.id for r in RULES if r.source == WATCH)


def rule(rule_id):
    """The Rule of ``rule_id``; ValueError for an id that is not in the vocabulary."""
    try:
        return BY_ID[rule_id]
    except (KeyError, TypeError):
        raise ValueError(f"unknown finding/event id {rule_id!r} (not in "
                         "model.vocabulary.RULES)") from None


def check(rule_id, severity):
    """Raise ValueError unless ``rule_id`` is in the vocabulary and gives ``severity``."""
    found = rule(rule_id)
    if severity not in found.severities:
        raise ValueError(f"{rule_id} is never a {severity!r} (its severities: "
                         f"{', '.join(found.severities)})")
    return found


def title(rule_id):
    return rule(rule_id).title
