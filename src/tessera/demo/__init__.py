"""The member-services demo: a simulated company's event stream, sent through the real API.

:mod:`tessera.demo.scenario` simulates the company (people, their records in
eight source systems, and the messiness real data has) and keeps the ground
truth of who is who. :mod:`tessera.demo.run` starts ``tessera serve``, sends the
stream over HTTP, waits for the processor, and checks the profiles it built
against that ground truth.
"""

from tessera.demo.scenario import Scenario, build_scenario

__all__ = ["Scenario", "build_scenario"]
