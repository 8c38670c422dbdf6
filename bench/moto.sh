# Sourced by the bench scripts: a moto server for this run, in $work, with one role, and the AWS
# environment that points tpa (and the SDKs) at it. Sets: port, endpoint, moto (its pid), role_arn.
# The caller's EXIT trap kills "$moto".
[ -x .venv/bin/moto_server ] || { python3 -m venv .venv && .venv/bin/pip install -q 'moto[server]>=5.2,<6'; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
endpoint=http://127.0.0.1:$port
for _ in $(seq 100); do curl -s -o /dev/null "$endpoint/moto-api/" && break; sleep 0.1; done
role_arn=$(curl -sf -X POST "$endpoint" \
  -H 'Authorization: AWS4-HMAC-SHA256 Credential=AKIABENCH/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0' \
  --data-urlencode Action=CreateRole --data-urlencode Version=2010-05-08 --data-urlencode RoleName=bench \
  --data-urlencode 'AssumeRolePolicyDocument={"Version":"2012-10-17","Statement":[]}' \
  | sed -n 's:.*<Arn>\(.*\)</Arn>.*:\1:p')
export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1 \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true TPA_NONINTERACTIVE=1
