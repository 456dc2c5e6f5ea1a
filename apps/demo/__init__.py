"""``queue-contrast crash-demo``: each backend through a SIGKILL and a restart, side by side.

``run`` drives the real processes, ``state`` holds what they did, ``terminal`` and ``page`` show it
live, ``chart`` draws the SVG."""
