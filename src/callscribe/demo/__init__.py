"""A bundled two-speaker conversation and the ``callscribe demo`` command.

Audio: caller = three CC0 utterances from the rhasspy "Kathleen" voice dataset; agent = three CMU
ARCTIC utterances (speaker axb; BSD-style licence, free use with attribution, Carnegie Mellon
University). Placement and texts are in ``script.json`` (also a script for the fake Gladia server).
"""
