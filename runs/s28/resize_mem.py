"""Peak memory of SliceBank.resized(128) on the 256 px training bank (run once per tree, a fresh process)."""
import resource

from iris_engine.data.slices import SliceBank

bank = SliceBank.load("runs/s21/bank256.npz")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
small = bank.resized(128)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(f"bank loaded: peak {before} MB; after resized(128): peak {after} MB (+{after - before} MB)")
