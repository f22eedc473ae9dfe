"""TODO"""

from agentcomm.bench.context import BenchContext, Result


async def run(context: BenchContext) -> Result:
    return {"scenario": "peer", "error": "not implemented yet"}
