// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title CheckpointRegistry: the on-chain anchor of one Conclave swarm.
/// @notice Every K heights the swarm's validators sign a checkpoint (the Merkle root of
/// the blocks they decided since the previous one). This contract accepts a checkpoint
/// only with signatures of validators holding more than 2/3 of the voting power, over a
/// digest bound to this chain, this contract and this swarm, and only as the next one in
/// order; then anyone can prove a decision against it off-chain.
/// @dev The validator set is fixed at construction (a new set means a new registry).
/// Signatures are 65 bytes r || s || v (v = 27 or 28, s in the lower half of the curve
/// order) and must be sorted by signer address, strictly ascending: that makes "each
/// signer counted once" a single comparison per signature.
contract CheckpointRegistry {
    bytes32 public constant DOMAIN = keccak256("conclave/checkpoint/v1");
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    struct Checkpoint {
        uint64 firstHeight;
        uint64 lastHeight;
        bytes32 root; // Merkle root of the block hashes at firstHeight..lastHeight
        bytes32 validatorSetHash;
        bytes32 prevCheckpointHash; // the off-chain identity of the previous checkpoint
        uint64 anchoredAtBlock;
        address submitter;
    }

    bytes32 public immutable swarmId;
    uint256 public immutable totalPower;
    address[] private validatorList;
    mapping(address => uint256) public powerOf;
    Checkpoint[] private checkpoints; // checkpoint number n is checkpoints[n - 1]

    event CheckpointAnchored(
        uint256 indexed number, uint64 firstHeight, uint64 lastHeight, bytes32 root, address indexed submitter
    );

    error WrongCheckpointNumber(uint256 expected, uint256 got);
    error WrongHeights(uint64 expectedFirst, uint64 first, uint64 last);
    error BadSignature(uint256 index);
    error SignersNotAscending(uint256 index);
    error UnknownSigner(uint256 index, address signer);
    error InsufficientPower(uint256 signed, uint256 total);

    constructor(bytes32 swarmId_, address[] memory validators_, uint256[] memory powers_) {
        require(validators_.length > 0 && validators_.length == powers_.length, "validators and powers differ");
        uint256 total;
        for (uint256 i = 0; i < validators_.length; i++) {
            address v = validators_[i];
            require(v != address(0), "zero address");
            require(powerOf[v] == 0, "validator listed twice");
            require(powers_[i] > 0, "zero power");
            powerOf[v] = powers_[i];
            total += powers_[i];
            validatorList.push(v);
        }
        swarmId = swarmId_;
        totalPower = total;
    }

    /// @notice What the validators sign for checkpoint `number`.
    function digest(
        uint256 number,
        uint64 firstHeight,
        uint64 lastHeight,
        bytes32 root,
        bytes32 validatorSetHash,
        bytes32 prevCheckpointHash
    ) public view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN, block.chainid, address(this), swarmId, number, firstHeight, lastHeight, root,
                validatorSetHash, prevCheckpointHash
            )
        );
    }

    /// @notice Anchor checkpoint `number` (the next one) with a quorum's signatures.
    function submit(
        uint256 number,
        uint64 firstHeight,
        uint64 lastHeight,
        bytes32 root,
        bytes32 validatorSetHash,
        bytes32 prevCheckpointHash,
        bytes[] calldata signatures
    ) external {
        uint256 count = checkpoints.length;
        if (number != count + 1) revert WrongCheckpointNumber(count + 1, number);
        uint64 expectedFirst = count == 0 ? 1 : checkpoints[count - 1].lastHeight + 1;
        if (firstHeight != expectedFirst || lastHeight < firstHeight) {
            revert WrongHeights(expectedFirst, firstHeight, lastHeight);
        }
        bytes32 d = digest(number, firstHeight, lastHeight, root, validatorSetHash, prevCheckpointHash);
        uint256 power;
        address previous;
        for (uint256 i = 0; i < signatures.length; i++) {
            address signer = _recover(d, signatures[i], i);
            if (signer <= previous) revert SignersNotAscending(i);
            previous = signer;
            uint256 p = powerOf[signer];
            if (p == 0) revert UnknownSigner(i, signer);
            power += p;
        }
        if (3 * power <= 2 * totalPower) revert InsufficientPower(power, totalPower);
        checkpoints.push(
            Checkpoint(
                firstHeight, lastHeight, root, validatorSetHash, prevCheckpointHash, uint64(block.number), msg.sender
            )
        );
        emit CheckpointAnchored(number, firstHeight, lastHeight, root, msg.sender);
    }

    function checkpointCount() external view returns (uint256) {
        return checkpoints.length;
    }

    function getCheckpoint(uint256 number) external view returns (Checkpoint memory) {
        require(number >= 1 && number <= checkpoints.length, "no such checkpoint");
        return checkpoints[number - 1];
    }

    function validators() external view returns (address[] memory) {
        return validatorList;
    }

    function _recover(bytes32 d, bytes calldata sig, uint256 index) private pure returns (address) {
        if (sig.length != 65) revert BadSignature(index);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if ((v != 27 && v != 28) || uint256(s) > HALF_N) revert BadSignature(index);
        address signer = ecrecover(d, v, r, s);
        if (signer == address(0)) revert BadSignature(index);
        return signer;
    }
}
