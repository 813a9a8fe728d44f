// buy.js: k6 load test of Yoink's POST /buy (the k6 counterpart of buy.lua).
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e SALE_ID=bench loadtest/buy.js
//
// The sale must exist (POST /sales or `yoink sale create`). Every request buys QUANTITY
// units for a user id never used before in this run, so with a big-stock sale every
// answer should be 202; with a small sale the rest are 409 sold_out. 503 (overloaded,
// with Retry-After) is an accepted answer under overload; anything else fails the run.
//
// Environment (k6 -e NAME=value or the process environment):
//   BASE_URL     API base URL                         [http://127.0.0.1:8080]
//   SALE_ID      sale to buy from                      [bench]
//   QUANTITY     units per request                     [1]
//   MODE         "arrival": constant arrival rate RATE/s for DURATION (open model,
//                the load does not slow down when the server does)
//                "ramp": ramping VUs 0 -> VUS over RAMP, hold DURATION, down over 10s
//                                                      [arrival]
//   RATE         requests/s in arrival mode            [2000]
//   DURATION     how long to hold the load             [30s]
//   VUS          VUs (ramp: the peak; arrival: pre-allocated) [200]
//   MAX_VUS      arrival mode: most VUs k6 may add     [2000]
//   RAMP         ramp mode: ramp-up time               [10s]
//   P99_MS       p99 threshold in milliseconds         [500]
//
// Thresholds (the run fails, exit code 99, when one is crossed):
//   - every answer is 202, 409 or 503 (a 429 means user ids repeated; a 5xx other
//     than 503, a 400 or a network error is a bug)
//   - p99 of /buy latency under P99_MS
//
// Output: k6's summary plus yoink_buy_status_* counters per status.

import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const SALE_ID = __ENV.SALE_ID || 'bench';
const QUANTITY = parseInt(__ENV.QUANTITY || '1', 10);
const MODE = __ENV.MODE || 'arrival';
const RATE = parseInt(__ENV.RATE || '2000', 10);
const DURATION = __ENV.DURATION || '30s';
const VUS = parseInt(__ENV.VUS || '200', 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || '2000', 10);
const RAMP = __ENV.RAMP || '10s';
const P99_MS = parseInt(__ENV.P99_MS || '500', 10);

const scenarios = {
  arrival: {
    buy: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: MAX_VUS,
    },
  },
  ramp: {
    buy: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: RAMP, target: VUS },
        { duration: DURATION, target: VUS },
        { duration: '10s', target: 0 },
      ],
      gracefulRampDown: '5s',
    },
  },
};
if (!scenarios[MODE]) {
  throw new Error(`MODE must be "arrival" or "ramp", not "${MODE}"`);
}

// 1 for an accepted status (202 reserved, 409 sold out, 503 overloaded), else 0.
const acceptedStatus = new Rate('yoink_buy_accepted_status');
const statusCounters = {
  202: new Counter('yoink_buy_status_202'),
  409: new Counter('yoink_buy_status_409'),
  429: new Counter('yoink_buy_status_429'),
  503: new Counter('yoink_buy_status_503'),
};
const otherStatus = new Counter('yoink_buy_status_other');

export const options = {
  scenarios: scenarios[MODE],
  discardResponseBodies: true,
  thresholds: {
    yoink_buy_accepted_status: ['rate==1'],
    'http_req_duration{name:buy}': [`p(99)<${P99_MS}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

// Only 202/409/503 count as "expected" for k6's own http_req_failed metric too.
http.setResponseCallback(http.expectedStatuses(202, 409, 503));

const params = {
  headers: { 'Content-Type': 'application/json' },
  tags: { name: 'buy' },
};

// A tag per run, so two runs against one sale never reuse a user id.
const RUN = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;

export function setup() {
  const res = http.get(`${BASE_URL}/readyz`, {
    tags: { name: 'readyz' },
    responseCallback: http.expectedStatuses(200),
  });
  if (res.status !== 200) {
    throw new Error(`${BASE_URL}/readyz answered ${res.status}; is yoink serve running?`);
  }
}

export default function () {
  // Unique in the whole test: vu id x that VU's iteration number, plus the run tag.
  const user = `k6-${RUN}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const res = http.post(
    `${BASE_URL}/buy`,
    JSON.stringify({ sale_id: SALE_ID, user_id: user, quantity: QUANTITY }),
    params,
  );
  const ok = res.status === 202 || res.status === 409 || res.status === 503;
  acceptedStatus.add(ok);
  (statusCounters[res.status] || otherStatus).add(1);
  check(res, { 'status is 202, 409 or 503': () => ok });
}
