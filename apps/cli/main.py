"""``queue-contrast``: the command group. The commands live in two modules: those that run a
process (``run_commands``: serve, worker, upstream, crash-demo) and those that talk to a running
service (``client_commands``: submit, status, result, cancel, jobs, dead-letters).
"""

from __future__ import annotations

from pathlib import Path

import click

from apps.cli import client_commands, run_commands
from apps.cli.common import package_version


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(
    package_version(),
    "--version",
    prog_name="queue-contrast",
    # the folder the packages run from: site-packages for an installed copy, the checkout for an
    # editable one
    message=f"%(prog)s %(version)s ({Path(__file__).resolve().parents[2]})",
)
def main() -> None:
    """One URL-fetching job pipeline on two backends: QUEUE_BACKEND=inmemory (asyncio.Queue in the
    serving process; at most once) or QUEUE_BACKEND=durable (Redis in arq's job format; at least once).

    Settings are environment variables: QUEUE_BACKEND, REDIS_URL, WORKERS, QUEUE_MAXSIZE,
    JOB_TIMEOUT, MAX_TRIES, HOST, PORT, SUBMIT_TIMEOUT, ALLOWED_HOSTS, API_TOKEN, ... (see the
    README). The client commands (submit, status, result, cancel, jobs, dead-letters) send API_TOKEN
    when it is set. Their exit codes: 0 ok; 1 the service said no (or a job failed, with submit
    --wait); 2 a bad option or argument, in one line; 3 no service answers at --api.
    """


for _command in (*run_commands.COMMANDS, *client_commands.COMMANDS):
    main.add_command(_command)
