# COUNT single-message POST /message/send requests spread evenly over SECONDS, from two
# keep-alive connections (scripts/callgrind-distributor.sh http).
# usage: http_post_load.py PORT COUNT SECONDS
import http.client, sys, time, threading
port, count, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
body = b'{"timestamp":1,"severity":"INFO","source":"bench","message":"GET /api/v1/orders 200 17 ms from client 0 with a typical length"}'
ok = [0, 0]
def worker(k, n):
    c = http.client.HTTPConnection("127.0.0.1", port)
    start = time.time()
    for i in range(n):
        target = start + i * secs / n
        d = target - time.time()
        if d > 0: time.sleep(d)
        c.request("POST", "/message/send", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status == 200: ok[k] += 1
ts = [threading.Thread(target=worker, args=(k, count // 2)) for k in range(2)]
[t.start() for t in ts]; [t.join() for t in ts]
print("accepted", sum(ok))
