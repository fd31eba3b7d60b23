"""Findings about object lifetimes in a crash: use-after-free, and a crash in chardev code.

Built on ``facts.objects`` (``model.liveness.ObjectLiveness``: every Chardev, QIOChannel,
QIOTask, GSource and QemuMutex the report reached, with its verdict and who holds it) and on
``facts.assertion`` (the failed assertion behind a SIGABRT).  No gdb imports.

Finding ids (defined once, with their titles, in ``model.vocabulary``):
  chardev-use-after-free   error  the crashing thread used a finalized or freed Chardev
  channel-use-after-free   error  ... a QIOChannel
  qiotask-use-after-free   error  ... a QIOTask
  gsource-use-after-free   error  ... a GSource (the census reports other holders)
  mutex-use-after-destroy  error  ... a destroyed QemuMutex that belongs to no dead chardev
  chardev-crash            error  a crash in chardev, channel, task, GSource-dispatch or lock
                                  code that no other rule explains: what the frames touch
"""
from qemu_chardev.model import vocabulary as ids
from qemu_chardev.model.diagnosis import Finding
from qemu_chardev.model.liveness import CHANNEL, CHARDEV, GSOURCE, MUTEX, TASK
from qemu_chardev.model.qemu import frame_roles

USE_AFTER_FREE_IDS = {CHARDEV: ids.CHARDEV_USE_AFTER_FREE, CHANNEL: ids.CHANNEL_USE_AFTER_FREE,
                      TASK: ids.QIOTASK_USE_AFTER_FREE, GSOURCE: ids.GSOURCE_USE_AFTER_FREE,
                      MUTEX: ids.MUTEX_USE_AFTER_DESTROY}
CHARDEV_CRASH = ids.CHARDEV_CRASH
# Frame roles that make a crash a crash "in chardev code" (model.qemu.frame_roles).
CRASH_ROLES = frozenset({"chardev", "channel", "task", "gsource", "lock"})
# How deep into the crashing stack the "touched" objects are looked for.
TOUCH_DEPTH = 24

LIFECYCLE_FIX = ("Whoever keeps this pointer must hold a reference for as long as it may use "
                 "it (object_ref() when the task, source or callback is created, "
                 "object_unref() in its destroy notify), or be cancelled and cleared when the "
                 "object is finalized (char_socket_finalize() must remove its GSources and "
                 "drop connect_task's callback).")


def _crash_frames(facts):
    thread = facts.crash_thread()
    return thread.frames if thread is not None else []


def assertion_concerns(facts):
    """The objects the asserting frame holds (``facts.assertion["frame"]`` of the crash)."""
    crash, assertion = facts.crashed(), facts.assertion
    if crash is None or not assertion or assertion.get("frame") is None:
        return []
    return [o for o in facts.objects
            if any(h.level == assertion["frame"] for h in o.held_by(crash.lwp))]


def _assertion_text(facts):
    assertion = facts.assertion
    if not assertion:
        return ""
    where = f"{assertion['file']}:{assertion['line']}"
    if assertion.get("function"):
        where += f" in {assertion['function']}()"
    expression = assertion.get("expression")
    text = (f" The process aborted on a failed assertion at {where}: "
            + (f"`{expression}`." if expression else f"{assertion.get('text')}."))
    concerns = assertion_concerns(facts)
    if concerns:
        text += " It concerns " + "; ".join(
            f"{o.describe()}, {o.verdict}" + (f" ({o.evidence[-1]})" if o.part_of else "")
            for o in concerns) + "."
    return text


def _lifecycle_story(obj, facts):
    """What the code shows about how a dead object came to be used."""
    tasks = [h for h in obj.holders if h.kind == "task"]
    callbacks = [h for h in obj.holders if h.kind == "frame" and h.function and
                 h.function in _callback_functions(facts)]
    lines = []
    if tasks:
        lines.append(f"A QIOTask still held it ({tasks[0].what}): the task's completion ran "
                     "after the object was finalized.")
    if callbacks:
        lines.append(f"It reached {callbacks[0].function}() as callback data, so a task or "
                     "GSource callback ran on it after its finalization.")
    return " ".join(lines)


def _callback_functions(facts):
    return {t.func_symbol for t in facts.tasks if getattr(t, "func_symbol", None)}


def use_after_free(facts):
    """An error for each finalized or freed object the crashing thread's frames hold."""
    crash = facts.crashed()
    if crash is None:
        return []
    dead = [o for o in facts.objects if o.dead and o.held_by(crash.lwp)]
    dead_chardevs = {o.address for o in dead if o.kind == CHARDEV}
    out = []
    who = facts.short_who(crash.lwp)
    for obj in dead:
        if obj.kind == MUTEX and obj.part_of in dead_chardevs:
            continue        # its chardev's finding says it
        holders = obj.held_by(crash.lwp)
        summary = (f"{who} crashed with {crash.signal_name} using {obj.describe()}, which is "
                   f"{obj.verdict}")
        detail = (f"{who} crashed ({crash.signal_name}) in code that holds a pointer to "
                  f"{obj.describe()}: " + "; ".join(h.what for h in holders) + ". "
                  f"That object is {obj.verdict}: " + "; ".join(obj.evidence) + "."
                  + _assertion_text(facts))
        story = _lifecycle_story(obj, facts)
        if story:
            detail += " " + story
        out.append(Finding(
            USE_AFTER_FREE_IDS[obj.kind], "error", summary, detail, LIFECYCLE_FIX,
            chardev=obj.label or (f"0x{obj.address:x}" if obj.kind == CHARDEV else None),
            lwp=crash.lwp, thread=crash.thread,
            evidence={"object": obj.to_json(), "assertion": facts.assertion}))
    return out


def chardev_crash(facts, found):
    """The catch-all: a crash whose frames run through chardev, channel, task, GSource
    dispatch or lock code, and no other error finding explains it."""
    crash = facts.crashed()
    if crash is None or any(f.severity == "error" for f in found):
        return []
    frames = _crash_frames(facts)
    roles = {}
    for frame in frames[:TOUCH_DEPTH]:
        for role in frame_roles(frame):
            if role in CRASH_ROLES:
                roles.setdefault(role, frame)
    if not roles:
        return []
    touched = [o for o in facts.objects if o.held_by(crash.lwp)]
    who = facts.short_who(crash.lwp)
    first = min(roles.values(), key=lambda f: f.level)
    summary = (f"{who} crashed with {crash.signal_name} in "
               f"{'/'.join(sorted(roles))} code ({first.function}, frame #{first.level})")
    detail = f"{who} crashed ({crash.signal_name}) with " + ", ".join(
        f"{role} code in frame #{frame.level} {frame.function}"
        for role, frame in sorted(roles.items(), key=lambda item: item[1].level)) + " on its stack."
    detail += _assertion_text(facts)
    if touched:
        detail += " Objects its frames hold: " + "; ".join(
            f"{o.describe()} {o.verdict} ({', '.join(o.evidence[:2])})" for o in touched) + "."
    else:
        detail += " Its frames hold no chardev, channel, task, GSource or mutex pointer."
    return [Finding(
        CHARDEV_CRASH, "error", summary, detail,
        "No known signature matched: start from the frames above and the objects' liveness; "
        "`qemu chardev show`, `qemu qiotask` and `qemu gsource` decode each object.",
        chardev=next((o.label for o in touched if o.kind == CHARDEV and o.label), None),
        lwp=crash.lwp, thread=crash.thread,
        evidence={"roles": sorted(roles), "objects": [o.to_json() for o in touched],
                  "assertion": facts.assertion})]


def name_objects(finding, facts):
    """Add ``evidence["liveness"]`` to a finding: each judged object of its chardev or held by
    its thread's frames, with its verdict (every finding names its objects so)."""
    wanted = {finding.chardev} if finding.chardev else set()
    objects = [o for o in facts.objects
               if (wanted & {o.label, f"0x{o.address:x}"}) or
               (finding.lwp is not None and o.held_by(finding.lwp))]
    finding.evidence.setdefault("liveness", [
        {"address": f"0x{o.address:x}", "kind": o.kind, "label": o.label,
         "verdict": o.verdict} for o in objects])
    return finding
