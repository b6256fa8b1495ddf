"""How much of the 10-NN class accuracy of a 3-D code is the code's scale: the accuracy of a trained run's codes
as they are, standardised per axis, and whitened (any affine map of the code can be folded into the decoder's
first Dense layer, so these are the same model's codes in another gauge), next to PCA-3's in the same three.

    PYTHONPATH=. python docs/studies/s27-knn/metric.py runs/q14 [more workdirs]

Prints, per run, the codes' per-axis std and the 10-NN accuracy of each variant (base: the training codes; the
transforms are fit on the training codes alone)."""
import sys

import numpy as np

from jaxae.evaluate import autoencoder_codec, batch_size_for, encode_split, fit_pca_codec, restore
from jaxae.metrics import KNN_K, knn_accuracy, nearest_neighbours, pad_to_multiple
from jaxae.models import model_from_config


def variants(train: np.ndarray, test: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    mean, std = train.mean(0), train.std(0)
    cov = np.cov(train - mean, rowvar=False)
    w, v = np.linalg.eigh(cov)
    white = v / np.sqrt(w)  # x -> (x - mean) @ white has identity covariance
    return {"raw": (train, test),
            "standardised": ((train - mean) / std, (test - mean) / std),
            "whitened": ((train - mean) @ white, (test - mean) @ white)}


def knn(train, test, ds) -> float:
    nn = np.asarray(nearest_neighbours(np.asarray(test, np.float32), np.asarray(train, np.float32), k=KNN_K))
    return knn_accuracy(nn, ds.train_labels, ds.test_labels, len(ds.class_names))


def main(workdirs: list[str]) -> None:
    for wd in workdirs:
        cfg, state, ds = restore(wd)
        x_test, _ = pad_to_multiple(ds.test_images, batch_size_for(len(ds.test_images)))
        x_train, _ = pad_to_multiple(ds.train_images, batch_size_for(len(ds.train_images)))
        ae = autoencoder_codec(model_from_config(cfg, ds.image_shape), state.params)
        pca = fit_pca_codec(ds, cfg.latent_dim)
        for codec in (ae, pca):
            train = np.asarray(encode_split(codec, x_train))[:len(ds.train_images)]
            test = np.asarray(encode_split(codec, x_test))[:len(ds.test_images)]
            std = train.std(0)
            cells = "  ".join(f"{name} {100 * knn(a, b, ds):.1f} %"
                              for name, (a, b) in variants(train, test).items())
            print(f"{wd} {codec.name:11s} axis std {np.array2string(std, precision=3)}  {KNN_K}-NN: {cells}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
