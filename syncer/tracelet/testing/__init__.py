"""Test helpers for Tracelet and for third-party destinations (README "Writing a destination").

* :mod:`.events` — event files from real TensorBoard protobufs (events, framed records);
* :mod:`.sources` — logdirs whose every point is known (:class:`~.sources.SourceTruth`);
* :mod:`.harness` — :class:`~.harness.Harness`: configure a destination, read it back with
  the vendor's own client (:class:`~.harness.ReadBack`);
* :mod:`.memory` — the memory destination's harness, the reference example;
* :mod:`.conformance` — the destination contract as pytest tests, to import into a
  destination's own test module (needs pytest).

``import tracelet`` never imports this package, and only :mod:`.conformance` imports pytest.
"""
