# kerbside node firmware - runs first on every boot: keep it minimal so a
# broken application can still be reached over the REPL for provisioning.
import gc

gc.collect()
