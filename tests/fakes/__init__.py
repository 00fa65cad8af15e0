"""Protocol-faithful fakes of the services flakebot talks to, for tests and demos.

Each fake is a real server on 127.0.0.1 that also starts standalone, e.g.
``python -m tests.fakes.jenkins --port 8080 --agents 4``.
"""
