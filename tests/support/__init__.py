"""Test harness for qemu-chardev-gdb: real QEMU builds, daemons, QMP, and batch gdb runs."""

from .builds import (BuildError, QemuBuild, binary_version, qemu_build, require_build,  # noqa: F401
                     versions_under_test)
from .daemon import (DaemonStartError, QemuDaemon, monitor_args,  # noqa: F401
                     plain_chardev_args, reconnect_option, reconnecting_client_args,
                     tcp_server_args, trace_args, trace_event_re)
from .gdb import (GdbCommandError, GdbProcess, GdbResult, GdbTimeout, gcore,  # noqa: F401
                  raw_gdb_values, run_gdb)
from .paths import EXTENSION_PATH, REPO_ROOT, TESTS_DIR  # noqa: F401
from .procs import kernel_cores_possible, listening_tcp_ports, wait_until  # noqa: F401
from .qmp import QMPClient, QMPError  # noqa: F401
from .scenarios import (Scenario, all_chardevs_scenario, monitor_scenario,  # noqa: F401
                        plain_chardevs_scenario, reconnect_scenario, run_gdb_stopped_in_write,
                        scenario, strip_debug, stripped_core, tcp_server_scenario)
