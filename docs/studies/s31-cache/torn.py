"""Two processes share a JAX LRUCache folder: one puts 20 MB entries, the other reads them as soon as they exist.
Counts the reads that got fewer bytes than were written (max_size -1: no lock; a size: JAX's file lock)."""
import multiprocessing as mp, sys, tempfile, time
from jax._src.lru_cache import LRUCache
N, SIZE = 40, 20 * 1024 * 1024

def writer(path, max_size):
    c = LRUCache(path, max_size=max_size)
    for i in range(N):
        c.put(f"k{i}", bytes([i % 251]) * SIZE)

def reader(path, max_size, q):
    c = LRUCache(path, max_size=max_size)
    torn = seen = 0
    deadline = time.time() + 60
    for i in range(N):
        while time.time() < deadline:
            v = c.get(f"k{i}")
            if v is not None:
                seen += 1
                torn += len(v) != SIZE
                break
    q.put((seen, torn))

if __name__ == "__main__":
    max_size = int(sys.argv[1])
    path = tempfile.mkdtemp()
    q = mp.Queue()
    r = mp.Process(target=reader, args=(path, max_size, q)); r.start()
    time.sleep(0.5)
    w = mp.Process(target=writer, args=(path, max_size)); w.start()
    w.join(); r.join()
    seen, torn = q.get()
    print(f"max_size {max_size}: {seen} entries read, {torn} of them cut short")
