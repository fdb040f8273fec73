"""OpenAI's published OpenAPI description, cut to what the simulator serves (`openapi.json`, MIT
licence in `LICENSE` beside it), and the script that cuts it (`python -m runner.simulator.openapi.reduce`).

The simulator validates request bodies (and, when asked, its own answers) against these schemas;
`runner.simulator.schemas` loads the file lazily, once per process.
"""
