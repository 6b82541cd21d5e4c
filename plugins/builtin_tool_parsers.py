"""Built-in plugin: the tool-call parsers ``hermes``, ``llama3_json`` and ``pythonic``."""
from pagedllm.plugins.hookspecs import hookimpl


@hookimpl
def register_tool_parsers(register):
    from pagedllm.tool_parsers.hermes import HermesToolParser
    from pagedllm.tool_parsers.llama3_json import Llama3JsonToolParser
    from pagedllm.tool_parsers.pythonic import PythonicToolParser

    for parser in (HermesToolParser, Llama3JsonToolParser, PythonicToolParser):
        register(parser.name, parser)
