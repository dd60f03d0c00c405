"""Parent side: launching children, the per-job listener thread, the escalation ladder,
reaping, and the per-application guard process. Never imported by the child runtime."""
