"""The main job, ``actkit demo``: an application over the steer and evaluate pillars and the reports.

`steering.run_demo` trains vectors from shipped pairs, steers, compares with the plain model and a random
direction of the same norm, and returns the numbers and the vectors, writing nothing; `cli.demo_command` then
writes both in one step (`actkit.report.steering.write_steering_report`), so a run stopped half-way leaves
``--out`` as it was. It sits above the pillars (it chooses the data, the built-in prompts and the report), so no
pillar imports it.
"""
