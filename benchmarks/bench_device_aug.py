"""Quick issue-16 measurement: photometric part, PIL worker view vs device_aug on one CPU thread (224 px).
Run: PYTHONPATH=. python benchmarks/bench_device_aug.py"""
import time, torch, numpy as np
from PIL import Image
from common.data import device_aug as D
from common.data.transforms import ViewSpec, ViewTransform
torch.set_num_threads(1)
spec=ViewSpec(224,(0.14,1.0),blur_prob=0.5)
img=Image.fromarray(np.random.randint(0,256,(224,224,3),dtype=np.uint8))
vt=ViewTransform(ViewSpec(224,(1.0,1.0),blur_prob=0.5)); rng=np.random.default_rng(0)
t=time.process_time(); n=20
for _ in range(n): vt(img,rng)
pil=n/(time.process_time()-t)
x=torch.randint(0,256,(16,3,224,224),dtype=torch.uint8); g=torch.Generator().manual_seed(0)
D.photometric(x,D.draw_params(spec,16,g),(0.5,)*3,(0.2,)*3)
t=time.process_time()
for _ in range(2): D.photometric(x,D.draw_params(spec,16,g),(0.5,)*3,(0.2,)*3)
dev=32/(time.process_time()-t)
print(f"224px one thread: PIL view (incl. crop) {pil:.0f} img/s, device path {dev:.0f} img/s, ratio {dev/pil:.2f}")
