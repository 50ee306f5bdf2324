"""``lookout demo``: the gateway and a simulated reservoir on one machine. The one part of ``gateway`` that may
import ``lookout.simulators``."""
