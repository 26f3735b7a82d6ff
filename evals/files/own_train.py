# Inside train.py: our churn model. Run: python train.py --version e0.1.0 --lr 0.1
import argparse
import pickle
import subprocess

import numpy as np
import pandas as pd
from xetrack import Tracker


def get_git_hash():
    return subprocess.check_output(['git', 'rev-parse', 'HEAD']).decode().strip()


parser = argparse.ArgumentParser()
parser.add_argument('--version', required=True)
parser.add_argument('--lr', type=float, default=0.1)
parser.add_argument('--epochs', type=int, default=30)
args = parser.parse_args()

train = pd.read_parquet('data/train.parquet')
test = pd.read_parquet('data/test.parquet')
cols = [c for c in train.columns if c.startswith('x')]
x = np.hstack([train[cols].to_numpy(), np.ones((len(train), 1))])
y = train['label'].to_numpy()
w = np.zeros(x.shape[1])
for _ in range(args.epochs):
    p = 1 / (1 + np.exp(-x @ w))
    w -= args.lr * x.T @ (p - y) / len(y)
train_loss = float(-np.mean(y * np.log(p + 1e-9) + (1 - y) * np.log(1 - p + 1e-9)))

xt = np.hstack([test[cols].to_numpy(), np.ones((len(test), 1))])
pred = (xt @ w > 0).astype(int)
yt = test['label'].to_numpy()
tp = int(((pred == 1) & (yt == 1)).sum())
prec = tp / max(int((pred == 1).sum()), 1)
rec = tp / max(int((yt == 1).sum()), 1)

tracker = Tracker(
    'results/experiments.db',
    params={
        'version': args.version,
        'git_commit': get_git_hash(),
        'model': 'logreg-gd',
        'learning_rate': args.lr,
    }
)
tracker.log({
    'f1_score': round(2 * prec * rec / max(prec + rec, 1e-9), 6),
    'precision': round(prec, 6),
    'recall': round(rec, 6),
    'epoch': args.epochs,
    'train_loss': round(train_loss, 6),
})

with open('models/production/model.bin', 'wb') as f:
    pickle.dump({'w': w.tolist(), 'lr': args.lr}, f)
print('f1', round(2 * prec * rec / max(prec + rec, 1e-9), 4))
