"""A small built-in English sample, so that ``actkit profile`` runs on a fresh machine with no arguments.

Forty short documents of varied register (narrative, technical, dialogue, lists, numbers, code-like text),
written for actkit. Real profiles should use text that resembles the model's use: pass ``--text FILE``.
"""

from __future__ import annotations

TEXT = """\
The morning train was late again, so Maria read the first chapter of her novel on the cold platform.
Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts of a leaf.
"Did you lock the back door?" he asked. "I think so," she said, and went downstairs to check anyway.
To make a simple bread, mix 500 g of flour, 10 g of salt, 7 g of yeast and 320 ml of warm water.
The committee will meet on Thursday at 3 p.m. to review the budget for the next fiscal year.
A prime number has exactly two divisors: one and itself. The first five primes are 2, 3, 5, 7 and 11.
The old lighthouse had not been used for decades, but every evening someone still lit a lamp in its window.
If the tests pass on your machine but fail in CI, compare the versions of the installed packages first.
Rivers carry sediment from the mountains to the sea, building deltas where the current slows down.
She planted tomatoes, basil and two rows of beans, then covered the seedlings against the late frost.
The function returns None when the key is missing, so callers must check the result before using it.
In 1969, two astronauts walked on the Moon while a third orbited above them in the command module.
Please remember to bring your passport, a printed copy of the ticket, and a charger for your phone.
The cat ignored the expensive toy and spent the whole afternoon playing with the cardboard box it came in.
Interest compounds: a deposit of 1,000 dollars at 5 percent a year grows to about 1,629 dollars in ten years.
The orchestra tuned to a single note from the oboe before the conductor raised her baton.
Glaciers move slowly, a few centimetres to a few metres each day, grinding the rock beneath them into fine flour.
When the power went out, the neighbours gathered in the street with candles and a guitar.
A good abstract states the question, the method, the main result and why the result matters.
He trained for months, yet on the day of the marathon a blister forced him to walk the last five miles.
Water boils at 100 degrees Celsius at sea level, but at lower temperatures high in the mountains.
The museum's new wing displays tools, pottery and jewellery found at a Bronze Age settlement nearby.
Our support team answers emails within one working day; urgent issues can be reported by phone.
The recipe calls for butter, but olive oil works just as well and gives the cake a lighter texture.
Bees communicate the direction and distance of flowers to their sisters with a waggle dance.
After the storm, the beach was covered in seaweed, driftwood and the occasional lost sandal.
Version 2.0 removes the deprecated options and adds a command that exports the results as JSON.
Children learn their first language without lessons, simply by listening and trying to be understood.
The detective noticed that the clock on the mantelpiece had stopped at exactly a quarter past nine.
Vaccines train the immune system to recognise a pathogen before it can cause a serious infection.
The bridge was closed for repairs, so the buses took a long detour through the industrial district.
On clear nights far from the city lights, thousands of stars and the band of the Milky Way are visible.
A sorted list can be searched in logarithmic time by repeatedly halving the range that may hold the value.
Grandfather kept every letter he ever received, tied in bundles with string, in a tin under his bed.
The referee blew the whistle, the crowd fell silent, and the penalty kick sailed over the crossbar.
Most deserts are not covered in sand dunes; many are rocky plains with scattered shrubs and gravel.
Keep the instructions for future reference and do not operate the device near water.
The translator worked through the night to finish the contract before the markets opened in Tokyo.
Autumn arrived early that year, and by the end of September the maples had turned bright red.
Thank you for your patience; we will let you know as soon as your order has been shipped.
"""


def default_texts() -> list[str]:
    """The built-in sample as documents, one per line."""
    return [line for line in TEXT.splitlines() if line.strip()]
