"""Step-up and enrolment wired into the login: the pages and the level decision per request."""
