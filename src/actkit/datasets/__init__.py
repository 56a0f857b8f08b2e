"""Readers for published behaviour and norm data sets, turned into the contrast pairs and prompts that
`actkit vector train`, `actkit eval steering` and the monitors take."""
