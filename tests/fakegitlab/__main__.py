"""`python -m tests.fakegitlab`: the fake GitLab standalone (see standalone.py)."""

from tests.fakegitlab.standalone import main

main()
